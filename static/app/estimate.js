// Job form: the pre-flight estimate (trainable parameters, adapter size, memory, time) before submitting.
(function () {
  const button = document.getElementById("estimate-job");
  if (!button) return;
  const box = document.getElementById("estimate");
  const fmt = (n) => Number(n).toLocaleString();
  function duration(s) { if (s == null) return "unknown until a first job on this model has run"; s = Math.round(s);
    return s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`; }
  button.addEventListener("click", async () => {
    box.textContent = "Estimating…";
    const r = await fetch(button.dataset.url, { method: "POST", body: new FormData(button.form), credentials: "same-origin" });
    const data = await r.json();
    box.replaceChildren();
    if (!data.estimate) {
      const errs = Object.entries(data.errors).map(([f, e]) => `${f === "__all__" ? "" : f + ": "}${e.map((x) => x.message).join(" ")}`);
      box.textContent = "Fix the form first: " + errs.join("; ");
      box.classList.add("errors");
      return;
    }
    const e = data.estimate;
    box.classList.toggle("errors", !e.fits);
    const lines = [
      `Trainable parameters: ${fmt(e.trainable_params)} of ${fmt(e.total_params)} (${e.trainable_percent.toFixed(3)} %)`,
      `Adapter size: ${e.adapter_mb.toFixed(1)} MB`,
      `Memory: about ${fmt(Math.round(e.memory_mb))} MB` + (e.memory_limit_mb ? ` of ${fmt(Math.round(e.memory_limit_mb))} MB` : ""),
      `Steps: ${fmt(e.steps)}; time: ${duration(e.seconds)}`,
    ].concat(e.fits ? [] : ["Does not fit: " + e.advice.join(" ")]);
    for (const text of lines) { const p = document.createElement("p"); p.textContent = text; box.append(p); }
    box.dataset.trainable = e.trainable_params;
  });
})();
