// Job form: the method follows the data. Choosing a dataset of preference pairs switches the method to DPO, of
// prompts to reward to reinforcement (of examples back to supervised) with a short note, and shows the dataset's
// too-few warning.
// The page never changes the dataset itself.
(function () {
  const select = document.getElementById("id_dataset");
  const method = document.getElementById("id_method");
  const source = document.getElementById("dataset-kinds");
  if (!select || !method || !source) return;
  const kinds = JSON.parse(source.textContent);
  const note = document.getElementById("dataset-note");
  const warning = document.getElementById("dataset-warning");
  const summary = document.getElementById("start-summary");
  // The kind of data a method trains on: preference pairs, prompts to reward, or examples with answers.
  const dataOf = (m) => (m === "dpo" || m === "orpo" ? "pairs" : m === "reinforcement" ? "prompts" : "examples");
  const said = {
    dpo: "the method is now DPO (trains on chosen vs rejected answers)",
    reinforcement: "the method is now reinforcement (answers are tried and scored by your grader)",
    supervised: "the method is now supervised",
  };

  function showWarning(kind) {
    if (!warning) return;
    warning.textContent = kind && kind.warning ? "Warning: " + kind.warning : "";
    warning.hidden = !(kind && kind.warning);
  }
  function followData() {
    const kind = kinds[select.value];
    showWarning(kind);
    if (!kind || dataOf(kind.method) === dataOf(method.value)) { if (note) note.textContent = ""; return; }
    method.value = kind.method;
    method.dispatchEvent(new Event("change", { bubbles: true }));
    if (note) note.textContent = `${kind.name} holds ${kind.kind.toLowerCase()}: ${said[kind.method]}.`;
  }
  select.addEventListener("change", () => { if (summary) summary.hidden = true; followData(); });
  for (const id of ["id_method", "id_start_from", "id_base_model"]) {
    const control = document.getElementById(id);
    if (control) control.addEventListener("change", (ev) => { if (ev.isTrusted && summary) summary.hidden = true; });
  }
  showWarning(kinds[select.value]);
})();
