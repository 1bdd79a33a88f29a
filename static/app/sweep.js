// Sweep page: follows /api/v1/sweeps/<id>/?curves=1 (every 2 s while the sweep runs or is paused) and redraws the
// leaderboard, the chart of every trial's metric per step (with its table), which settings matter, and Promote.
(function () {
  const root = document.getElementById("sweep-root");
  if (!root) return;
  const $ = (id) => document.getElementById(id);
  const LIVE = ["running", "paused"];
  const minimize = root.dataset.direction === "minimize";
  const COLOURS = ["#4f46e5", "#f79009", "#12b76a", "#d92d20", "#0086c9", "#7a5af8", "#c11574", "#667085"];
  const chart = new Chart($("sweep-chart"), {
    type: "line",
    data: { datasets: [] },
    options: { animation: false, parsing: false, responsive: true,
      aspectRatio: window.matchMedia("(max-width: 700px)").matches ? 1.3 : 2.6,
      scales: { x: { type: "linear", title: { display: true, text: "step" } } } },
  });

  function cell(tr, label, content) {
    const td = document.createElement("td");
    td.dataset.label = label;
    if (content instanceof Node) td.appendChild(content); else td.textContent = content;
    tr.appendChild(td);
  }

  function render(s) {
    $("sweep-status").textContent = s.status;
    $("sweep-status").className = `status ${s.status}`;
    $("sweep-waiting").textContent = s.waiting || "";
    // The leaderboard: finished trials by their metric, best first, then the others by number.
    const scored = s.trials.filter((t) => t.state === "complete").sort((a, b) => (minimize ? a.metric - b.metric : b.metric - a.metric));
    const rest = s.trials.filter((t) => t.state !== "complete");
    const body = $("leaderboard").tBodies[0];
    body.replaceChildren();
    [...scored, ...rest].forEach((t) => {
      const tr = document.createElement("tr");
      tr.dataset.trial = t.number;
      cell(tr, "Rank", t.state === "complete" ? String(scored.indexOf(t) + 1) : "");
      const link = document.createElement("a");
      link.textContent = `#${t.number}`;
      if (t.job) link.href = `/jobs/${t.job}/`;
      cell(tr, "Trial", link);
      const badge = document.createElement("span");
      badge.className = `status ${t.status}`;
      badge.textContent = t.status;
      cell(tr, "Status", badge);
      cell(tr, "Metric", t.metric == null ? "" : t.metric.toFixed(4));
      cell(tr, "Progress", `${t.step} / ${t.total_steps || "?"}`);
      const code = document.createElement("code");
      code.textContent = Object.entries(t.settings).map(([k, v]) => `${k}=${typeof v === "number" ? +v.toPrecision(4) : v}`).join(" ");
      cell(tr, "Settings", code);
      body.appendChild(tr);
    });
    // One line per trial; its table beside.
    const curves = s.curves || {};
    chart.data.datasets = Object.keys(curves).map((n, i) => ({
      label: `trial ${n}`, data: curves[n].map(([x, y]) => ({ x, y })), borderColor: COLOURS[i % COLOURS.length],
      pointRadius: 2, borderWidth: 2,
    }));
    chart.update("none");
    const rows = $("sweep-chart-table").tBodies[0];
    rows.replaceChildren();
    Object.keys(curves).forEach((n) => curves[n].forEach(([x, y]) => {
      const tr = document.createElement("tr");
      [`#${n}`, String(x), y.toFixed(4)].forEach((v) => { const td = document.createElement("td"); td.textContent = v; tr.appendChild(td); });
      rows.appendChild(tr);
    }));
    const importance = $("importance");
    const entries = Object.entries(s.importance || {});
    if (entries.length) {
      importance.replaceChildren(...entries.map(([name, value]) => {
        const li = document.createElement("li");
        li.textContent = `${name}: ${value.toFixed(2)}`;
        return li;
      }));
    }
    $("promote-form").hidden = s.best_trial == null;
    if (s.result) { $("sweep-result").hidden = false; $("result-model").textContent = s.result; }
  }

  async function tick() {
    let s;
    try {
      const r = await fetch(`${root.dataset.api}?curves=1`, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (!r.ok) throw new Error(String(r.status));
      s = await r.json();
    } catch (err) { setTimeout(tick, 3000); return; }
    render(s);
    // The actions change with the status: reload once when it changes (the buttons come from the server).
    if (s.status !== root.dataset.status) { window.location.reload(); return; }
    if (LIVE.includes(s.status)) setTimeout(tick, 2000);
  }
  tick();
})();
