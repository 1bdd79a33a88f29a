// Ask a judge page: while the judgement shown is queued or running, read it from /api/v1/ every second and a half,
// counting the prompts judged; once it ends (or a prompt more is judged) the judgement's card is redrawn from the
// server, with its verdicts, win rate and agreement with your votes.
(function () {
  const WORKING = ["queued", "running"];

  async function tick() {
    const card = document.getElementById("judgement");
    if (!card || !WORKING.includes(card.dataset.status)) return;
    let data;
    try {
      const r = await fetch(card.dataset.url, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (!r.ok) throw new Error(String(r.status));
      data = await r.json();
    } catch (err) { setTimeout(tick, 3000); return; }
    const done = card.querySelector("[data-done]");
    if (data.status !== card.dataset.status || (done && String(data.done) !== done.textContent)) {
      try { await window.LoraStudio.refreshParts(["judgement"]); } catch (err) { /* the next tick tries again */ }
    }
    setTimeout(tick, 1500);
  }
  setTimeout(tick, 1500);
})();
