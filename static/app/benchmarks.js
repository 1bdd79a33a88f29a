// Job page, Benchmarks card: lists the built-in suites and the user's datasets, asks for a run with
// POST /api/v1/jobs/<id>/benchmarks/ (errors shown beside their field), and shows each run: while it works its
// stage and progress (read again every two seconds), once ready a table of base vs adapted per task with the 95%
// interval and the change, tasks that could not run (offline) in words, and the forgetting warnings.
(function () {
  const card = document.getElementById("benchmarks");
  if (!card) return;
  const form = document.getElementById("benchmark-form");
  const runsBox = document.getElementById("benchmark-runs");
  const csrf = form.querySelector("[name=csrfmiddlewaretoken]").value;
  const WORKING = ["queued", "running"];
  const json = { credentials: "same-origin", headers: { Accept: "application/json" } };

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    for (const c of children) node.append(c);
    return node;
  }
  const pct = (v) => `${(100 * v).toFixed(1)}%`;
  const scoreText = (s) => (s ? `${pct(s.value)} (${pct(s.low)}–${pct(s.high)})` : "–");

  async function loadChoices() {
    const box = document.getElementById("benchmark-suites");
    try {
      const suites = await (await fetch(card.dataset.suitesUrl, json)).json();
      box.textContent = "";
      box.classList.remove("hint");
      for (const s of suites) {
        const id = `suite-${s.name}`;
        const input = el("input", { type: "checkbox", name: "suites", value: s.name, id });
        if (s.bundled) input.checked = true;
        box.append(el("p", {}, input, " ", el("label", { for: id }, s.title + (s.bundled ? "" : " (needs its data on the server)"))));
      }
    } catch (err) { box.textContent = "The suites could not be loaded; reload the page."; }
    try {
      const datasets = await (await fetch(card.dataset.datasetsUrl, json)).json();
      const select = form.querySelector("select[name=dataset]");
      for (const d of datasets.results || datasets) select.append(el("option", { value: d.id }, d.name));
    } catch (err) { /* the held-out split and the suites still work */ }
  }

  function runView(run) {
    const box = el("div", { class: "benchmark-run", "data-run-id": run.id, "data-status": run.status });
    const what = [...run.suites, run.dataset ? `your data: ${run.dataset} (${run.scoring})` : ""].filter(Boolean).join(", ");
    let state = run.status;
    if (run.status === "running") state = `${run.stage || "working"}… ${Math.round(100 * run.progress)} %`;
    if (run.status === "queued") state = "waiting for the background worker…";
    if (run.status === "failed") state = `failed: ${run.error}`;
    box.append(el("h3", {}, `${new Date(run.created_at).toLocaleString()}: ${what}`), el("p", { role: "status" }, state));
    if (WORKING.includes(run.status)) {
      const cancel = el("button", { type: "button", class: "small" }, "Cancel");
      cancel.addEventListener("click", () => post(`${card.dataset.cancelUrl}${run.id}/cancel/`, null).then(refresh));
      box.append(cancel);
    }
    for (const w of run.warnings || []) box.append(el("p", { class: "flash error", role: "alert" }, w));
    if (run.status === "ready") box.append(resultTable(run));
    return box;
  }

  function resultTable(run) {
    const head = el("tr", {}, ...["Task", "Metric", "Base (95% interval)", "Adapted (95% interval)", "Change"].map((t) => el("th", { scope: "col" }, t)));
    const body = el("tbody");
    for (const r of run.results) {
      const name = r.task + (r.general ? " (general)" : "");
      if (r.unavailable) {
        body.append(el("tr", {}, el("td", { "data-label": "Task" }, name), el("td", { colspan: "4", "data-label": "Unavailable" }, r.unavailable)));
        continue;
      }
      const change = r.base && r.adapted ? `${((r.adapted.value - r.base.value) * 100).toFixed(1)} points` : "–";
      body.append(el("tr", { "data-task": r.task },
        el("td", { "data-label": "Task" }, name), el("td", { "data-label": "Metric" }, `${r.metric}, ${r.examples} examples`),
        el("td", { "data-label": "Base" }, scoreText(r.base)), el("td", { "data-label": "Adapted" }, scoreText(r.adapted)),
        el("td", { "data-label": "Change" }, change)));
    }
    return el("table", { class: "answers stack" }, el("thead", {}, head), body);
  }

  async function post(url, body) {
    return fetch(url, { method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": csrf },
      body: body === null ? undefined : JSON.stringify(body) });
  }

  let timer = null;
  async function refresh() {
    clearTimeout(timer);
    let runs;
    try {
      const r = await fetch(card.dataset.listUrl, json);
      if (!r.ok) throw new Error(String(r.status));
      runs = await r.json();
    } catch (err) { timer = setTimeout(refresh, 5000); return; }
    runsBox.replaceChildren(...runs.slice(0, 5).map(runView));
    if (runs.some((r) => WORKING.includes(r.status))) timer = setTimeout(refresh, 2000);
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    for (const e of form.querySelectorAll("[data-error-for]")) e.textContent = "";
    const data = new FormData(form);
    const body = { suites: data.getAll("suites"), scoring: data.get("scoring"), limit: Number(data.get("limit")) };
    if (data.get("dataset")) body.dataset = data.get("dataset");
    const r = await post(card.dataset.listUrl, body);
    if (!r.ok) {
      const err = (await r.json().catch(() => ({}))).error || { field: "suites", message: `the server answered ${r.status}` };
      const field = String(err.field || "suites").split(".")[0];
      const slot = form.querySelector(`[data-error-for="${field}"]`) || form.querySelector('[data-error-for="suites"]');
      slot.textContent = err.message;
      const input = form.querySelector(`[name="${field}"]`);
      if (input) input.focus();
      return;
    }
    refresh();
  });

  loadChoices();
  refresh();
})();
