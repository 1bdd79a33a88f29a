// Pages that wait for background work (a large upload's check, a dataset's token count): an element
// with data-poll-url is refreshed every second from that JSON address while its status is one of
// data-poll-while; the progress text goes into [data-poll-text], and the page reloads once the work ends.
(function () {
  for (const el of document.querySelectorAll("[data-poll-url]")) {
    const waiting = (el.dataset.pollWhile || "").split(" ");
    const text = el.querySelector("[data-poll-text]");
    async function tick() {
      let data;
      try {
        const r = await fetch(el.dataset.pollUrl, { credentials: "same-origin", headers: { Accept: "application/json" } });
        if (!r.ok) throw new Error(String(r.status));
        data = await r.json();
      } catch (err) { setTimeout(tick, 3000); return; }
      if (!waiting.includes(data.status)) { window.location.reload(); return; }
      if (text) {
        if (data.total !== undefined) text.textContent = `Counting tokens: ${data.done} of ${data.total} examples…`;
        else if (data.status === "queued") text.textContent = "Waiting for a worker…";
        else text.textContent = (data.stage || "Starting…") + (data.rows ? ` (${data.rows.toLocaleString()} rows)` : "");
      }
      el.dataset.status = data.status;
      setTimeout(tick, 1000);
    }
    setTimeout(tick, 1000);
  }
})();
