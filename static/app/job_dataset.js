// Job form: the method follows the data. Choosing a dataset of preference pairs switches the method to DPO
// (a dataset of examples back to supervised) with a short note, and shows the dataset's too-few warning.
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
  const isPreference = (m) => m === "dpo" || m === "orpo";

  function showWarning(kind) {
    if (!warning) return;
    warning.textContent = kind && kind.warning ? "Warning: " + kind.warning : "";
    warning.hidden = !(kind && kind.warning);
  }
  function followData() {
    const kind = kinds[select.value];
    showWarning(kind);
    if (!kind || kind.pairs === isPreference(method.value)) { if (note) note.textContent = ""; return; }
    method.value = kind.pairs ? "dpo" : "supervised";
    method.dispatchEvent(new Event("change", { bubbles: true }));
    if (note) {
      note.textContent = kind.pairs
        ? `${kind.name} holds preference pairs: the method is now DPO (trains on chosen vs rejected answers).`
        : `${kind.name} holds ${kind.kind.toLowerCase()}: the method is now supervised.`;
    }
  }
  select.addEventListener("change", () => { if (summary) summary.hidden = true; followData(); });
  for (const id of ["id_method", "id_start_from", "id_base_model"]) {
    const control = document.getElementById(id);
    if (control) control.addEventListener("change", (ev) => { if (ev.isTrusted && summary) summary.hidden = true; });
  }
  showWarning(kinds[select.value]);
})();
