// Workers page: the workers and queue tables follow /api/v1/workers/ (now, then every few seconds).
(function () {
  const root = document.getElementById("workers-root");
  if (!root) return;
  function cell(row, text, href) {
    const td = row.insertCell();
    if (href) {
      const a = document.createElement("a"); a.href = href; a.textContent = text; td.appendChild(a);
    } else {
      td.textContent = text;
    }
  }
  function render(data) {
    const workers = document.querySelector("#workers-table tbody");
    workers.replaceChildren();
    for (const w of data.workers) {
      const row = workers.insertRow();
      cell(row, w.name); cell(row, `${w.count} × ${w.device}`); cell(row, `${Math.round(w.memory_mb)} MB`);
      cell(row, w.queues.join(", "));
      if (w.job) cell(row, w.job.name, `/jobs/${w.job.id}/`); else cell(row, w.busy ? "busy" : "idle");
    }
    if (!data.workers.length) {
      const row = workers.insertRow(); row.className = "empty";
      const td = row.insertCell(); td.colSpan = 5;
      td.textContent = "No train worker has announced itself: jobs are queued and start when one does.";
    }
    const queues = document.querySelector("#queues-table tbody");
    queues.replaceChildren();
    for (const q of data.queues) {
      const row = queues.insertRow();
      cell(row, q.name); cell(row, q.max_memory_gb ? `${q.max_memory_gb} GB` : "more");
      cell(row, String(q.queued_jobs)); cell(row, String(q.messages)); cell(row, String(q.workers));
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
