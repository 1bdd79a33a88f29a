// Runs side by side: every job's train and eval loss in one chart (the table below holds the figures).
(function () {
  const el = document.getElementById("runs-data");
  if (!el) return;
  const colours = ["#4f46e5", "#f79009", "#12b76a", "#f04438", "#0ba5ec", "#7a5af8", "#ee46bc", "#667085"];
  const datasets = [];
  JSON.parse(el.textContent).forEach((s, i) => {
    datasets.push({ label: s.label + " train", data: s.points.map((p) => ({ x: p[0], y: p[1] })),
                    borderColor: colours[i % 8], pointRadius: 0, borderWidth: 2 });
    const ev = s.points.filter((p) => p[2] !== null).map((p) => ({ x: p[0], y: p[2] }));
    if (ev.length) datasets.push({ label: s.label + " eval", data: ev, borderColor: colours[i % 8],
                                   borderDash: [6, 4], pointRadius: 2, borderWidth: 2 });
  });
  new Chart(document.getElementById("runs-chart"), { type: "line", data: { datasets },
    options: { animation: false, parsing: false, aspectRatio: window.matchMedia("(max-width: 700px)").matches ? 1.3 : 2.6, scales: { x: { type: "linear", title: { display: true, text: "step" } },
                                                             y: { title: { display: true, text: "loss" } } } } });
})();
