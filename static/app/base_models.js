// The Models page: a model being downloaded or converted shows its progress, read every second from
// its /api/v1/base-models/<id>/ detail (LoraStudio.poll, from poll.js); the page reloads once the work
// has ended (ready or failed).
(function () {
  const WORKING = ["queued", "downloading", "converting"];
  const mb = (n) => (n / 1048576).toLocaleString(undefined, { maximumFractionDigits: 1 }) + " MB";
  for (const el of document.querySelectorAll("[data-model-poll]")) {
    const bar = el.querySelector("progress");
    const status = el.querySelector("[data-model-status]");
    const text = el.querySelector("[data-model-text]");
    const tick = window.LoraStudio.poll(el.dataset.modelPoll, (data) => WORKING.includes(data.status), (data) => {
      status.textContent = data.status;
      if (data.status === "downloading" && data.bytes_total) {
        bar.max = data.bytes_total;
        bar.value = Math.min(data.bytes_done, data.bytes_total);
        text.textContent = `${mb(data.bytes_done)} of ${mb(data.bytes_total)}`;
      } else if (data.status === "converting") {
        bar.removeAttribute("value");  // indeterminate: the conversion reports no steps
        text.textContent = "Converting the GGUF file…";
      } else {
        text.textContent = "Waiting for a worker…";
      }
    });
    tick();
  }
})();
