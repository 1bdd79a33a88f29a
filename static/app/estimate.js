// Job form: the pre-flight estimate (trainable parameters, adapter size, memory, time), run again after every
// change to the form (Method included), so what it shows always matches the fields; the button runs it at once.
(function () {
  const button = document.getElementById("estimate-job");
  if (!button) return;
  const form = button.form;
  const box = document.getElementById("estimate");
  const fmt = (n) => Number(n).toLocaleString();
  const gb = (mb) => (mb >= 1024 ? `${(mb / 1024).toFixed(mb < 10240 ? 1 : 0)} GB` : `${fmt(Math.round(mb))} MB`);
  let latest = 0;
  let timer = null;
  function duration(s, source) {
    if (s == null) return "unknown until a first job on this model has run";
    s = Math.round(s);
    const t = s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`;
    return source === "calibrated" ? `about ${t} (calibrated from this machine's measured speed; refined after a first job)` : t;
  }
  function memory(e) {
    const needed = `Memory: about ${gb(e.memory_mb)}`;
    if (!e.memory_limit_mb) return needed;
    return `${needed} of the ${gb(e.memory_limit_mb)} ${e.memory_limit_of || "available"}`;
  }
  function setField(field, value) {
    const input = document.getElementById("id_" + field);
    if (!input) return;
    if (input.type === "checkbox") input.checked = Boolean(value);
    else input.value = String(value);
    input.dispatchEvent(new Event("change", { bubbles: true }));
  }
  function para(text, cls) { const p = document.createElement("p"); p.textContent = text; if (cls) p.className = cls; return p; }
  function show(data) {
    box.replaceChildren();
    if (!data.estimate) {
      const label = (f) => { const l = document.querySelector(`label[for="id_${f}"]`); return l ? l.firstChild.textContent.trim() : f; };
      const errs = Object.entries(data.errors).map(([f, e]) => `${f === "__all__" ? "" : label(f) + ": "}${e.map((x) => x.message).join(" ")}`);
      box.textContent = "Fix the form first: " + errs.join("; ");
      box.classList.add("errors");
      return;
    }
    const e = data.estimate;
    box.classList.toggle("errors", !e.fits);
    const lines = [
      `Trainable parameters: ${fmt(e.trainable_params)} of ${fmt(e.total_params)} (${e.trainable_percent.toFixed(3)} %)`,
      `Adapter size: ${e.adapter_mb.toFixed(1)} MB`,
      memory(e),
      `Steps: ${fmt(e.steps)}; time: ${duration(e.seconds, e.seconds_source)}`,
    ].concat(e.lengths_known === false ? ["Approximate: the dataset's tokens are still being counted, so lengths are guessed from its characters."] : []);
    for (const text of lines) box.append(para(text));
    for (const text of e.warnings || []) box.append(para("Warning: " + text, "estimate-warning"));
    if (!e.fits) {
      box.append(para("Does not fit. Each of these changes would make it fit:"));
      const list = document.createElement("ul");
      list.className = "estimate-advice";
      const items = e.advice_changes || e.advice.map((text) => ({ text, changes: {} }));
      for (const item of items) {
        const li = document.createElement("li");
        li.append(item.text + ". ");
        if (Object.keys(item.changes || {}).length) {
          const apply = document.createElement("button");
          apply.type = "button";
          apply.className = "apply-advice";
          apply.textContent = "Apply";
          apply.addEventListener("click", () => { for (const [f, v] of Object.entries(item.changes)) setField(f, v); run(); });
          li.append(apply);
        }
        list.append(li);
      }
      box.append(list);
    }
    box.dataset.trainable = e.trainable_params;
  }
  async function run() {
    clearTimeout(timer);
    const mine = ++latest;
    // The last figures stay in view, marked as being redone, until the new ones arrive (no jump on each key).
    box.querySelector(".estimating")?.remove();
    box.prepend(para("Estimating…", "estimating"));
    box.setAttribute("aria-busy", "true");
    let data;
    try {
      const r = await fetch(button.dataset.url, { method: "POST", body: new FormData(form), credentials: "same-origin" });
      data = await r.json();
    } catch (err) {
      data = { errors: { __all__: [{ message: "the estimate could not be reached; check the connection and try again." }] } };
    }
    if (mine !== latest) return;  // a later change has asked again: only its answer is shown
    box.removeAttribute("aria-busy");
    show(data);
  }
  function soon() { clearTimeout(timer); timer = setTimeout(run, 400); }
  button.addEventListener("click", run);
  form.addEventListener("change", soon);
  form.addEventListener("input", (event) => { if (event.target.matches("input[type=text], input[type=number]")) soon(); });
  if (document.getElementById("id_dataset")?.value) run();
})();

// Goals: choosing Quick try / Balanced / Best quality fills the settings it defines; editing one of them after
// that picks "My own settings", so the form never claims a goal it no longer is.
(function () {
  const form = document.getElementById("job-form");
  const source = document.getElementById("presets");
  const custom = document.getElementById("goal-custom");  // "My own settings"
  if (!form || !source || !custom) return;
  const presets = JSON.parse(source.textContent);
  let filling = false;
  function fill(name) {
    const values = presets[name];
    if (!values) return;
    filling = true;
    for (const [field, value] of Object.entries(values)) {
      const input = document.getElementById("id_" + field);
      if (!input) continue;
      if (input.type === "checkbox") input.checked = Boolean(value);
      else input.value = String(value);
      input.dispatchEvent(new Event("change", { bubbles: true }));
    }
    filling = false;
  }
  for (const radio of form.querySelectorAll('input[name="preset"]')) radio.addEventListener("change", () => fill(radio.value));
  const watched = new Set(Object.values(presets).flatMap((v) => Object.keys(v)));
  for (const field of watched) {
    const input = document.getElementById("id_" + field);
    if (!input) continue;
    for (const kind of ["input", "change"]) input.addEventListener(kind, () => { if (!filling) custom.checked = true; });
  }
})();

// Errors: a field that came back wrong is marked for screen readers, its folded section is opened and the
// first one gets the focus. Fields that do not apply to the choices made are hidden (custom modules only for
// a custom list, the validation dataset only when validating on another dataset, beta only for DPO / ORPO / reinforcement, the grader and its sampling only for reinforcement, sharding only on several devices).
(function () {
  const form = document.getElementById("job-form");
  if (!form) return;
  const wrong = [...form.querySelectorAll(".field.has-error")];
  for (const field of wrong) {
    const input = field.querySelector("input, select, textarea");
    const message = field.querySelector(".field-error");
    if (!input) continue;
    input.setAttribute("aria-invalid", "true");
    if (message) { message.id = `${input.id}-error`; input.setAttribute("aria-describedby", message.id); }
    const section = field.closest("details");
    if (section) section.open = true;
  }
  const first = wrong.length && wrong[0].querySelector("input, select, textarea");
  if (first) first.focus();

  const RULES = [
    ["target_modules", "target_preset", (v) => v === "custom"],
    ["validation_percent", "validation", (v) => v === "split"],
    ["validation_seed", "validation", (v) => v === "split"],
    ["validation_dataset", "validation", (v) => v === "dataset"],
    ["beta", "method", (v) => v === "dpo" || v === "orpo" || v === "reinforcement"],
    ["grader", "method", (v) => v === "reinforcement"],
    ["group_size", "method", (v) => v === "reinforcement"],
    ["sample_temperature", "method", (v) => v === "reinforcement"],
    ["max_answer_tokens", "method", (v) => v === "reinforcement"],
    ["sharding", "devices", (v) => Number(v) > 1],
  ];
  function apply() {
    for (const [name, by, shown] of RULES) {
      const field = document.getElementById("field-" + name);
      const control = document.getElementById("id_" + by);
      if (!field || !control) continue;
      field.hidden = !shown(control.value) && !field.classList.contains("has-error");
    }
  }
  for (const by of new Set(RULES.map((r) => r[1]))) {
    const control = document.getElementById("id_" + by);
    if (control) control.addEventListener("change", apply);
  }
  apply();
})();
