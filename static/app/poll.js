// Waiting for background work. `LoraStudio.poll(url, working, render)` reads the JSON at `url` every
// second while `working(data)` holds, handing each answer to `render(data)`, and reloads the page once
// the work has ended; a failed read is retried after 3 s. Elements with data-poll-url (a large upload's
// check, a dataset's token count) are followed this way while their status is one of data-poll-while,
// the progress going into [data-poll-text].
(function () {
  const LoraStudio = (window.LoraStudio = window.LoraStudio || {});

  LoraStudio.poll = function (url, working, render) {
    async function tick() {
      let data;
      try {
        const r = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
        if (!r.ok) throw new Error(String(r.status));
        data = await r.json();
      } catch (err) { setTimeout(tick, 3000); return; }
      if (!working(data)) { window.location.reload(); return; }
      render(data);
      setTimeout(tick, 1000);
    }
    return tick;
  };

  // Redraw parts of this page from the server: the elements with these ids are replaced by the same ones
  // of a fresh copy of the page (an element the fresh copy lacks is left as it is). Resolves to that copy.
  LoraStudio.refreshParts = async function (ids) {
    const r = await fetch(window.location.href, { credentials: "same-origin", headers: { Accept: "text/html" } });
    if (!r.ok) throw new Error(String(r.status));
    const fresh = new DOMParser().parseFromString(await r.text(), "text/html");
    for (const id of ids) {
      const now = document.getElementById(id);
      const next = fresh.getElementById(id);
      if (now && next) now.replaceWith(document.importNode(next, true));
    }
    return fresh;
  };

  for (const el of document.querySelectorAll("[data-poll-url]")) {
    const waiting = (el.dataset.pollWhile || "").split(" ");
    const text = el.querySelector("[data-poll-text]");
    const tick = LoraStudio.poll(el.dataset.pollUrl, (data) => waiting.includes(data.status), (data) => {
      if (text) {
        if (data.total !== undefined) text.textContent = `Counting tokens: ${data.done} of ${data.total} examples…`;
        else if (data.status === "queued") text.textContent = "Waiting for a worker…";
        else text.textContent = (data.stage || "Starting…") + (data.rows ? ` (${data.rows.toLocaleString()} rows)` : "");
      }
      el.dataset.status = data.status;
    });
    setTimeout(tick, 1000);
  }
})();
