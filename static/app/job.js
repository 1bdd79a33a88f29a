// Job page: the loss chart follows the job's server-sent events (no polling, no reload).
(function () {
  const root = document.getElementById("job-root");
  if (!root) return;
  const TERMINAL = ["succeeded", "failed", "cancelled", "pruned"];
  const $ = (id) => document.getElementById(id);
  const CHART_RATIO = window.matchMedia("(max-width: 700px)").matches ? 1.3 : 2.6;  // a phone keeps a readable height
  const chart = new Chart($("loss-chart"), {
    type: "line",
    data: { datasets: [
      { label: "train loss", data: [], borderColor: "#4f46e5", pointRadius: 0, borderWidth: 2, tension: 0.15 },
      { label: "eval loss", data: [], borderColor: "#f79009", pointRadius: 3, borderWidth: 2, showLine: true },
      { label: "best checkpoint", data: [], borderColor: "#12b76a", backgroundColor: "#12b76a", pointRadius: 7,
        pointStyle: "star", showLine: false },
    ] },
    options: { animation: false, parsing: false, responsive: true, aspectRatio: CHART_RATIO,
      scales: { x: { type: "linear", title: { display: true, text: "step" } }, y: { title: { display: true, text: "loss" } } } },
  });
  // Preference jobs (DPO, ORPO): reward margin (left axis) and accuracy (right axis), train and validation.
  const rewardCanvas = $("reward-chart");
  const rewards = rewardCanvas && new Chart(rewardCanvas, {
    type: "line",
    data: { datasets: [
      { label: "train margin", key: "reward_margin", yAxisID: "y", data: [], borderColor: "#4f46e5", pointRadius: 0, borderWidth: 2 },
      { label: "eval margin", key: "eval_reward_margin", yAxisID: "y", data: [], borderColor: "#f79009", pointRadius: 3, borderWidth: 2 },
      { label: "train accuracy", key: "reward_accuracy", yAxisID: "acc", data: [], borderColor: "#12b76a", pointRadius: 0, borderWidth: 1, borderDash: [4, 3] },
      { label: "eval accuracy", key: "eval_reward_accuracy", yAxisID: "acc", data: [], borderColor: "#b42318", pointRadius: 3, borderWidth: 1, borderDash: [4, 3] },
    ] },
    options: { animation: false, parsing: false, responsive: true, aspectRatio: CHART_RATIO,
      scales: { x: { type: "linear", title: { display: true, text: "step" } },
                y: { title: { display: true, text: "reward margin" } },
                acc: { position: "right", min: 0, max: 1, title: { display: true, text: "accuracy" }, grid: { drawOnChartArea: false } } } },
  });
  // A metric point onto a chart whose datasets name their metric (`key`), and its figures into the stat boxes:
  // [element id, metric, decimals].
  function follow(target, p, stats) {
    if (!target) return;
    for (const d of target.data.datasets) {
      if (p[d.key] != null) { d.data.push({ x: p.step, y: p[d.key] }); d.data.sort((a, b) => a.x - b.x); }
    }
    for (const [id, key, digits] of stats) { if (p[key] != null) $(id).textContent = p[key].toFixed(digits); }
    target.update("none");
  }
  const onRewards = (p) => follow(rewards, p, [["stat-margin", "reward_margin", 3], ["stat-accuracy", "reward_accuracy", 2]]);
  // Reinforcement jobs: the grader's mean score of the tried answers and of validation answers, and the spread.
  const scoreCanvas = $("score-chart");
  const scores = scoreCanvas && new Chart(scoreCanvas, {
    type: "line",
    data: { datasets: [
      { label: "tried answers", key: "reward", data: [], borderColor: "#4f46e5", pointRadius: 0, borderWidth: 2 },
      { label: "validation", key: "eval_reward", data: [], borderColor: "#f79009", pointRadius: 3, borderWidth: 2 },
      { label: "spread", key: "reward_spread", data: [], borderColor: "#12b76a", pointRadius: 0, borderWidth: 1, borderDash: [4, 3] },
    ] },
    options: { animation: false, parsing: false, responsive: true, aspectRatio: CHART_RATIO,
      scales: { x: { type: "linear", title: { display: true, text: "step" } }, y: { title: { display: true, text: "score" } } } },
  });
  // Each named grader's part of a multi grader (reward/<name>, eval_reward/<name>) gets its own line when it first
  // shows up.
  const PART_COLOURS = ["#7a5af8", "#ee46bc", "#0ba5ec", "#669f2a", "#dc6803"];
  function addGraderParts(p) {
    if (!scores) return;
    for (const key of Object.keys(p)) {
      if (!/^(eval_)?reward\//.test(key) || scores.data.datasets.some((d) => d.key === key)) continue;
      const [side, name] = key.split("/");
      const colour = PART_COLOURS[scores.data.datasets.length % PART_COLOURS.length];
      scores.data.datasets.push({ label: `${name} (${side === "reward" ? "tried" : "validation"})`, key, data: [],
        borderColor: colour, pointRadius: side === "reward" ? 0 : 3, borderWidth: 1 });
    }
  }
  const onScores = (p) => addGraderParts(p) || follow(scores, p, [
    ["stat-reward", "reward", 3], ["stat-spread", "reward_spread", 3], ["stat-answer-tokens", "answer_tokens", 0]]);
  const seen = new Set();
  const renderedStatus = root.dataset.status;
  function fmtEta(s) {
    if (s == null || !isFinite(s)) return "–";
    s = Math.round(s); const m = Math.floor(s / 60);
    return m ? `${m} min ${s % 60} s` : `${s} s`;
  }
  function setStatus(st) {
    const el = $("job-status"); el.textContent = st; el.className = "status " + st; root.dataset.status = st;
    const waiting = $("job-waiting");
    if (waiting && st !== "queued") waiting.hidden = true;  // the reason a queued job waits, now past
  }
  // The chart's points as a table too (for screen readers and copying), in step order.
  const tableBody = document.querySelector("#loss-table tbody");
  function addTableRow(p) {
    if (!tableBody || (p.loss == null && p.eval_loss == null)) return;
    const row = document.createElement("tr");
    row.dataset.step = p.step;
    for (const v of [p.step, p.loss, p.eval_loss]) {
      const cell = document.createElement("td");
      cell.textContent = v == null ? "–" : (Number.isInteger(v) ? String(v) : v.toFixed(4));
      row.append(cell);
    }
    const after = [...tableBody.rows].find((r) => Number(r.dataset.step) > p.step);
    tableBody.insertBefore(row, after || null);
  }
  function onMetric(p) {
    if (seen.has(p.step)) return;
    seen.add(p.step);
    if (p.loss != null) chart.data.datasets[0].data.push({ x: p.step, y: p.loss });
    if (p.eval_loss != null) chart.data.datasets[1].data.push({ x: p.step, y: p.eval_loss });
    chart.data.datasets.forEach((d) => d.data.sort((a, b) => a.x - b.x));
    $("stat-step").textContent = p.step;
    if (p.total_steps) $("stat-total").textContent = p.total_steps;
    if (p.loss != null) $("stat-loss").textContent = p.loss.toFixed(4);
    if (p.tokens_per_s != null) $("stat-tps").textContent = Math.round(p.tokens_per_s);
    if (p.mfu != null) $("stat-mfu").textContent = `${(p.mfu * 100).toFixed(1)} %`;
    $("stat-eta").textContent = fmtEta(p.eta_s);
    if (p.epoch != null) $("stat-epoch").textContent = p.epoch.toFixed(2);
    if (p.lr != null) $("stat-lr").textContent = p.lr.toExponential(2);
    if (p.grad_norm != null) $("stat-grad").textContent = p.grad_norm.toFixed(3);
    if (p.memory_mb != null) $("stat-mem").textContent = `${Math.round(p.memory_mb).toLocaleString()} MB`;
    if (p.best && p.eval_loss != null) {
      const best = chart.data.datasets[2].data;
      // Points can replay out of order; the best is the lowest marked one.
      if (!best.length || p.eval_loss <= best[0].y) { best.splice(0, best.length, { x: p.step, y: p.eval_loss }); }
      $("stat-best").textContent = `${best[0].y.toFixed(4)} at step ${best[0].x}`;
      $("stat-best").dataset.step = best[0].x;
    }
    chart.update("none");
    addTableRow(p);
    onRewards(p);
    onScores(p);
    const c = $("points-count"); c.dataset.count = seen.size; c.textContent = `${seen.size} points`;
  }
  const source = new EventSource(root.dataset.eventsUrl);
  source.addEventListener("metric", (e) => onMetric(JSON.parse(e.data)));
  // What the job does once the steps are over, shown where the ETA was.
  const FINISHING = { evaluate: "evaluating…", best: "saving…", saved: "saving…" };
  source.addEventListener("message", (e) => {
    const m = JSON.parse(e.data); const li = document.createElement("li");
    const time = document.createElement("time"); const now = new Date();
    time.dateTime = now.toISOString(); time.textContent = now.toTimeString().slice(0, 8);
    const kind = document.createElement("b"); kind.textContent = m.kind;
    li.append(time, " ", kind, " ", m.message);
    $("job-log").append(li);  // oldest first, as the page draws it
    if (FINISHING[m.kind] && !TERMINAL.includes(root.dataset.status)) $("stat-eta").textContent = FINISHING[m.kind];
  });
  // The end of the job (evaluation, downloads) and a merged export in progress are drawn in place.
  const refresh = (ids) => window.LoraStudio.refreshParts(ids).then(followMerge, () => setTimeout(() => refresh(ids), 2000));
  function followMerge() {
    if ($("merge-pending")) setTimeout(() => refresh(["job-actions"]), 2000);
  }
  followMerge();
  source.addEventListener("status", (e) => {
    const s = JSON.parse(e.data);
    setStatus(s.status);
    if (s.total_steps) $("stat-total").textContent = s.total_steps;
    if (s.precision) $("stat-precision").textContent = s.precision;
    if (s.error) { $("job-error").textContent = s.error; $("job-error").classList.remove("hidden"); }
    if (TERMINAL.includes(s.status) || s.status === "paused") {
      source.close();
      // A paused job can still be cancelled; an ended one has nothing left to stop.
      document.querySelectorAll(TERMINAL.includes(s.status) ? ".live-only, .running-only" : ".running-only")
        .forEach((f) => f.remove());
      // Failed, cancelled or paused: reload once so the page offers Retry / Resume.
      if (s.status !== "succeeded" && s.status !== renderedStatus) { setTimeout(() => location.reload(), 300); }
      $("stat-eta").textContent = "–";
      if (s.status === "succeeded" && renderedStatus !== "succeeded") refresh(["job-summary", "job-actions", "evaluation-slot"]);
    }
  });
})();
