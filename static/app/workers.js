// Workers page: the workers and the train queue follow /api/v1/workers/ (now, then every few seconds).
(function () {
  const root = document.getElementById("workers-root");
  if (!root) return;
  // Each cell carries its column's name (data-label): on a phone a row reads as a card.
  function cell(row, label, text, href) {
    const td = row.insertCell();
    td.dataset.label = label;
    if (href) {
      const a = document.createElement("a"); a.href = href; a.textContent = text; td.appendChild(a);
    } else {
      td.textContent = text;
    }
  }
  function render(data) {
    const workers = document.querySelector("#workers-table tbody");
    workers.replaceChildren();
    for (const [i, w] of data.workers.entries()) {
      const row = workers.insertRow();
      cell(row, "Worker", w.name || String(i + 1));  // names are for staff only
      cell(row, "Devices", `${w.count} × ${w.device}`); cell(row, "Memory per device", `${Math.round(w.memory_mb)} MB`);
      if (w.job) cell(row, "Now", w.job.name, `/jobs/${w.job.id}/`); else cell(row, "Now", w.busy ? "busy" : "idle");
    }
    if (!data.workers.length) {
      const row = workers.insertRow(); row.className = "empty";
      const td = row.insertCell(); td.colSpan = 4;
      td.textContent = "No train worker has announced itself: jobs are queued and start when one does.";
    }
    const n = data.queued_jobs;  // staff only
    document.getElementById("queued-jobs").textContent =
      (n === undefined ? "" : `${n} job${n === 1 ? "" : "s"} queued (all users). `) +
      "A free worker takes the fairest queued job that fits its memory.";
    const waiting = document.querySelector("#waiting-table tbody");
    waiting.replaceChildren();
    for (const j of data.waiting) {
      const row = waiting.insertRow();
      cell(row, "Job", j.name, `/jobs/${j.id}/`); cell(row, "Why it waits", j.reason);
    }
    if (!data.waiting.length) {
      const row = waiting.insertRow(); row.className = "empty";
      const td = row.insertCell(); td.colSpan = 2; td.textContent = "None of your jobs is queued.";
    }
  }
  async function refresh() {
    try {
      const r = await fetch(root.dataset.api, { credentials: "same-origin" });
      if (r.ok) { render(await r.json()); root.dataset.refreshed = String(Date.now()); }
    } catch (e) { /* the next refresh tries again */ }
  }
  refresh();
  setInterval(refresh, 5000);
})();
