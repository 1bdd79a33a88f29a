// Runs side by side: one loss chart per kind of loss (a preference loss and a supervised loss do not share a
// scale), each run's train and eval loss on the chart of its method; and the "Only differences" switch, which
// hides the settings where every run agrees (the table below holds the figures).
(function () {
  const table = document.getElementById("runs-table");
  const only = document.getElementById("only-differences");
  const note = document.getElementById("differences-note");
  if (table && only && note) {
    const differing = Number(note.dataset.differing), total = Number(note.dataset.total);
    const show = () => {
      table.classList.toggle("only-differences", only.checked);
      if (only.checked) {
        note.textContent = differing
          ? `Showing the ${differing} of ${total} settings where the runs differ; untick to see all.`
          : "The runs use the same data and settings; untick to see them.";
      } else {
        note.textContent = `Showing all ${total} settings; the ${differing} where the runs differ are marked.`;
      }
    };
    only.addEventListener("change", show);
    show();
  }

  const el = document.getElementById("runs-data");
  if (!el) return;
  const colours = ["#4f46e5", "#f79009", "#12b76a", "#f04438", "#0ba5ec", "#7a5af8", "#ee46bc", "#667085"];
  const series = JSON.parse(el.textContent);
  document.querySelectorAll("canvas[data-kind]").forEach((canvas) => {
    const datasets = [];
    series.forEach((s, i) => {
      if (s.method !== canvas.dataset.kind) return;
      datasets.push({ label: s.label + " train", data: s.points.map((p) => ({ x: p[0], y: p[1] })),
                      borderColor: colours[i % 8], pointRadius: 0, borderWidth: 2 });
      const ev = s.points.filter((p) => p[2] !== null).map((p) => ({ x: p[0], y: p[2] }));
      if (ev.length) datasets.push({ label: s.label + " eval", data: ev, borderColor: colours[i % 8],
                                     borderDash: [6, 4], pointRadius: 2, borderWidth: 2 });
    });
    new Chart(canvas, { type: "line", data: { datasets },
      options: { animation: false, parsing: false,
                 aspectRatio: window.matchMedia("(max-width: 700px)").matches ? 1.3 : 2.6,
                 scales: { x: { type: "linear", title: { display: true, text: "step" } },
                           y: { title: { display: true, text: canvas.dataset.axis } } } } });
  });
})();
