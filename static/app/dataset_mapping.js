// Column-mapping step: beside each role's select, show a few values of the column picked in it,
// so the user sees what a column holds before mapping it (the values come from the server's check).
(function () {
  const data = document.getElementById("column-samples");
  if (!data) return;
  const samples = JSON.parse(data.textContent);
  document.querySelectorAll("[data-samples-for]").forEach((hint) => {
    const select = document.getElementById(hint.dataset.samplesFor);
    if (!select) return;
    const show = () => {
      const values = samples[select.value] || [];
      hint.textContent = values.length ? "e.g. " + values.map((v) => `“${v}”`).join(" · ") : "";
    };
    select.addEventListener("change", show);
  });
})();
