// Job page, Export card: while an export is being made, read the job's exports from /api/v1/ every
// second and a half, showing each one's stage and progress; when one ends (ready or failed) the card is
// redrawn from the server, with its download link and the Ollama commands.
(function () {
  const card = document.getElementById("export");
  if (!card) return;
  const WORKING = ["pending", "running"];

  function describe(e) {
    if (e.status === "running") return `${e.stage || "working"}… ${Math.round(100 * e.progress)} %`;
    if (e.status === "pending") return "waiting for the background worker…";
    return e.status;
  }

  async function tick() {
    const box = document.getElementById("export");
    const shown = [...box.querySelectorAll("[data-export-id]")];
    if (!shown.some((li) => WORKING.includes(li.dataset.status))) return;
    let list;
    try {
      const r = await fetch(box.dataset.exportsUrl, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (!r.ok) throw new Error(String(r.status));
      list = await r.json();
    } catch (err) { setTimeout(tick, 3000); return; }
    let ended = false;
    for (const li of shown) {
      const e = list.find((x) => String(x.id) === li.dataset.exportId);
      if (!e) continue;
      if (WORKING.includes(li.dataset.status) && !WORKING.includes(e.status)) ended = true;
      li.dataset.status = e.status;
      li.querySelector(".export-status").textContent = describe(e);
    }
    if (ended) {
      try { await window.LoraStudio.refreshParts(["export"]); } catch (err) { /* the next tick tries again */ }
    }
    setTimeout(tick, 1500);
  }
  setTimeout(tick, 1000);
})();
