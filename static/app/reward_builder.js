// Job form, reinforcement: "How answers are scored". Starting points in plain words fill the grader's JSON box
// (under Custom settings, one click away and still editable); Check asks /api/v1/graders/validate/, Try asks
// /api/v1/graders/try/ for the start model's answers to the dataset's first prompts and shows their scores.
(function () {
  const panel = document.getElementById("reward-builder");
  const box = document.getElementById("id_grader");
  const method = document.getElementById("id_method");
  const dataset = document.getElementById("id_dataset");
  const source = document.getElementById("dataset-kinds");
  if (!panel || !box || !method || !dataset || !source) return;
  const form = panel.closest("form");
  const csrf = form.querySelector("[name=csrfmiddlewaretoken]").value;
  const kinds = JSON.parse(source.textContent);
  const start = document.getElementById("rb-start");
  const fieldSelect = document.getElementById("rb-field");
  const fieldRow = document.getElementById("rb-field-row");
  const noFields = document.getElementById("rb-no-fields");
  const keyRow = document.getElementById("rb-key-row");
  const keyInput = document.getElementById("rb-key");
  const result = document.getElementById("rb-result");
  const table = document.getElementById("rb-rows");
  const checkButton = document.getElementById("rb-check");
  const tryButton = document.getElementById("rb-try");
  let generated = ""; // what the builder last wrote: replacing it needs no question (a grader already there does)

  const answerText = "{{sample.output_text}}";
  const fieldOf = (name) => `{{item.${name}}}`;
  const slug = (text) => text.replace(/[^A-Za-z0-9_]+/g, "_").slice(0, 40) || "field";
  // Each starting point as OpenAI's grader JSON, for the chosen field (and key of a JSON answer).
  const STARTS = {
    equals: (f) => ({ type: "string_check", name: `equals_${slug(f)}`, operation: "eq", input: answerText, reference: fieldOf(f) }),
    contains: (f) => ({ type: "string_check", name: `contains_${slug(f)}`, operation: "ilike", input: answerText, reference: fieldOf(f) }),
    close: (f) => ({
      type: "text_similarity", name: `close_to_${slug(f)}`, evaluation_metric: "fuzzy_match", input: answerText, reference: fieldOf(f),
    }),
    json: (f, key) => ({
      type: "string_check", name: `json_${slug(key)}`, operation: "eq", input: `{{sample.output_json.${key}}}`, reference: fieldOf(f),
    }),
    python: (f) => ({
      type: "python",
      name: "my_grader",
      source: [
        "def grade(sample, item) -> float:",
        "    # sample[\"output_text\"] is the model's answer (sample[\"output_json\"] when it is JSON);",
        `    # item holds your row's fields, e.g. item[${JSON.stringify(f)}]. Return a score from 0 (bad) to 1 (good).`,
        "    answer = sample[\"output_text\"].strip().lower()",
        `    wanted = str(item.get(${JSON.stringify(f)}, "")).strip().lower()`,
        "    return 1.0 if answer == wanted else 0.0",
        "",
      ].join("\n"),
    }),
    multi: (f) => ({
      type: "multi",
      name: "combined",
      graders: {
        exact: { type: "string_check", name: "exact", operation: "eq", input: answerText, reference: fieldOf(f) },
        close: { type: "text_similarity", name: "close", evaluation_metric: "fuzzy_match", input: answerText, reference: fieldOf(f) },
      },
      calculate_output: "0.5 * exact + 0.5 * close",
    }),
  };

  function showForMethod() {
    panel.hidden = method.value !== "reinforcement";
  }
  function fillFields() {
    const kind = kinds[dataset.value];
    const fields = (kind && kind.fields) || [];
    const kept = fieldSelect.value;
    fieldSelect.replaceChildren(...fields.map((name) => new Option(name, name)));
    if (fields.includes(kept)) fieldSelect.value = kept;
    noFields.hidden = fields.length > 0;
    fieldSelect.hidden = fields.length === 0;
  }
  function write() {
    const make = STARTS[start.value];
    keyRow.hidden = start.value !== "json";
    fieldRow.hidden = !make;
    if (!make) return;
    const text = JSON.stringify(make(fieldSelect.value || "answer", keyInput.value.trim() || "answer"), null, 2);
    if (box.value.trim() && box.value !== generated && !window.confirm("Replace the grader you wrote in the JSON box?")) return;
    box.value = generated = text;
    box.dispatchEvent(new Event("change", { bubbles: true }));
    say("", "");
  }
  function say(text, cls) {
    result.textContent = text;
    result.className = cls;
  }
  function graderOrSay() {
    if (!box.value.trim()) { say("Choose a starting point first, or write the grader's JSON.", "rb-error"); return null; }
    try {
      return JSON.parse(box.value);
    } catch (e) {
      say(`The grader's JSON is not valid: ${e.message}`, "rb-error");
      return null;
    }
  }
  async function post(url, body) {
    const r = await fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrf }, body: JSON.stringify(body),
    });
    const data = await r.json().catch(() => ({}));
    return { ok: r.ok, data };
  }
  function problem(data) {
    const e = data.error || {};
    if (e.message) return e.field ? `${e.field}: ${e.message}` : e.message;
    const fields = Object.entries(data).map(([k, v]) => `${k}: ${[].concat(v).join(" ")}`);
    return fields.length ? fields.join("; ") : "The server could not answer; try again.";
  }
  const score = (x) => (x == null ? "–" : Number(x).toFixed(2));

  async function check() {
    const grader = graderOrSay();
    if (!grader) return;
    checkButton.disabled = true;
    say("Checking…", "");
    try {
      const { ok, data } = await post(panel.dataset.validateUrl, { grader });
      say(ok ? `The grader is fine: "${data.grader.name}" (${data.grader.type}) scores each answer.` : problem(data), ok ? "rb-ok" : "rb-error");
    } finally {
      checkButton.disabled = false;
    }
  }
  function value(id) {
    const control = document.getElementById(id);
    return control ? control.value : "";
  }
  async function tryRows() {
    const grader = graderOrSay();
    if (!grader) return;
    const tokens = parseInt(value("id_max_answer_tokens"), 10);
    const body = { dataset: dataset.value, base_model: value("id_base_model"), start_from: value("id_start_from"), grader, rows: 3 };
    if (tokens > 0) body.max_answer_tokens = tokens;
    tryButton.disabled = true;
    table.hidden = true;
    say("The model is answering your first prompts…", "");
    try {
      const { ok, data } = await post(panel.dataset.tryUrl, body);
      if (!ok) { say(problem(data), "rb-error"); return; }
      const rows = data.rows.map((row) => {
        const tr = document.createElement("tr");
        const details = Object.entries(row.scores).map(([name, s]) => `${name}: ${score(s)}`).concat(row.problems);
        for (const [label, text] of [["Prompt", row.prompt], ["Answer", row.answer], ["Score", score(row.reward)], ["Details", details.join("; ")]]) {
          const td = document.createElement("td");
          td.dataset.label = label;
          td.textContent = text;
          tr.append(td);
        }
        return tr;
      });
      table.tBodies[0].replaceChildren(...rows);
      table.hidden = false;
      const rewards = data.rows.map((r) => r.reward).filter((r) => r != null);
      const mean = rewards.length ? rewards.reduce((a, b) => a + b, 0) / rewards.length : null;
      say(`${data.rows.length} answers scored; mean score ${score(mean)}.`, "rb-ok");
    } finally {
      tryButton.disabled = false;
    }
  }

  method.addEventListener("change", showForMethod);
  dataset.addEventListener("change", () => { fillFields(); if (STARTS[start.value]) write(); });
  start.addEventListener("change", write);
  fieldSelect.addEventListener("change", write);
  keyInput.addEventListener("change", write);
  checkButton.addEventListener("click", check);
  tryButton.addEventListener("click", tryRows);
  document.getElementById("rb-edit").addEventListener("click", () => {
    const custom = box.closest("details");
    if (custom) custom.open = true;
    box.scrollIntoView({ block: "center" });
    box.focus();
  });
  fillFields();
  keyRow.hidden = true;
  fieldRow.hidden = true;
  showForMethod();
})();
