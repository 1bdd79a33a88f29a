// Check page: the histogram of token lengths, bins past the max length in red, a dashed line at the limit.
// For preference pairs the chosen side (prompt + chosen) and the rejected side are two bar series.
(function () {
  const el = document.getElementById("histogram-data");
  if (!el) return;
  const canvas = document.getElementById("length-histogram");
  const h = JSON.parse(el.textContent);
  const maxLen = Number(canvas.dataset.maxLength);
  // prompts to reward: their own noun, and the limit is what the answers leave of the max length
  const noun = canvas.dataset.noun || "examples";
  const limit = canvas.dataset.limit || "max length";
  const labels = h.counts.map((_, i) => `${h.edges[i]}–${h.edges[i + 1] - 1}`);
  const limitBin = Math.min(h.counts.length - 1, Math.floor(maxLen / h.width));
  const pairs = Array.isArray(h.rejected_counts);
  const colours = (colour) => h.counts.map((_, i) => i * h.width >= maxLen ? "#f04438" : colour);
  new Chart(canvas, {
    type: "bar",
    data: { labels, datasets: pairs ? [
      { label: "prompt + chosen", data: h.counts, backgroundColor: colours("#6172f3") },
      { label: "prompt + rejected", data: h.rejected_counts, backgroundColor: colours("#f79009"), borderColor: "#b54708",
        borderWidth: 1 }] : [{ label: noun, data: h.counts, backgroundColor: colours("#6172f3") }] },
    options: { animation: false, aspectRatio: window.matchMedia("(max-width: 700px)").matches ? 1.3 : 2.6, plugins: { legend: { display: pairs },
      title: { display: true, text: `tokens per ${pairs ? "side of a pair" : noun.replace(/s$/, "")} (red: beyond ${limit} ${maxLen}, in bin ${labels[limitBin]})` } },
      scales: { x: { title: { display: true, text: "tokens" } }, y: { title: { display: true, text: pairs ? "pairs" : noun } } } },
    plugins: [{ id: "maxline", afterDraw(chart) {
      const x = chart.scales.x, y = chart.scales.y, ctx = chart.ctx;
      const px = x.getPixelForValue(limitBin) + (x.getPixelForValue(1) - x.getPixelForValue(0)) * ((maxLen % h.width) / h.width - 0.5);
      ctx.save(); ctx.strokeStyle = "#b42318"; ctx.setLineDash([6, 4]); ctx.lineWidth = 2;
      ctx.beginPath(); ctx.moveTo(px, y.top); ctx.lineTo(px, y.bottom); ctx.stroke(); ctx.restore();
      canvas.dataset.maxLine = Math.round(px);
    } }],
  });
})();
