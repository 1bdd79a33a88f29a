// Compare page: one prompt to two or three models at once; answers stream in as server-sent events.
// Blind A/B: the server shuffles two models anew each round and names them only in its answer to that round's
// vote; a new blind round takes the earlier rounds' names off the screen, so a name seen in column A last round
// does not pass for this round's A.
// It speaks the REST API (/api/v1/) like any client, signed in by the session cookie plus CSRF.
(function () {
  const form = document.getElementById("compare-form");
  if (!form) return;
  const csrf = form.querySelector("[name=csrfmiddlewaretoken]").value;
  const columns = document.getElementById("columns");
  const voteBar = document.getElementById("vote-bar");
  const voteResult = document.getElementById("vote-result");
  const err = document.getElementById("compare-error");
  const stopButton = document.getElementById("stop");
  const voteHint = document.getElementById("vote-hint");
  const promptBox = document.getElementById("prompt");
  let session = null;        // a new selection of models (or of blind mode) starts a new session
  let columnKeys = [];       // the answer keys the columns were built for, left to right
  let openRound = null;      // {id, turns: {position: turn element}} of the round awaiting a vote

  const el = (tag, cls, text) => {
    const e = document.createElement(tag); if (cls) e.className = cls; if (text !== undefined) e.textContent = text;
    return e;
  };
  const post = (url, body) => fetch(url, { method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRFToken": csrf }, body: JSON.stringify(body) });
  // The REST API's three error shapes: a product error, DRF's per-field messages, or a detail.
  const showError = (data) => {
    if (data.error) { err.textContent = `${data.error.field}: ${data.error.message}`; return; }
    if (data.detail) { err.textContent = data.detail; return; }
    err.textContent = Object.entries(data).map(([field, msgs]) => `${field}: ${[].concat(msgs).join(" ")}`).join("; ");
  };
  // A column's key: its letter in a blind round, else who answers in it: "base", "adapter" (this page's
  // job) or another job's id.
  const columnKey = (answer, blind) => {
    if (blind) return "ABC"[answer.position];
    if (answer.model.kind === "base") return "base";
    return answer.model.id === form.dataset.jobId ? "adapter" : answer.model.id;
  };
  // "first token 0.4 s · total 1.9 s · 12 tokens", as the infer worker timed the answer.
  const answerStats = (m) => {
    const secs = (ms) => (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + " s";
    return [m.first_token_ms === null ? "no text" : `first token ${secs(m.first_token_ms)}`,
            `total ${secs(m.total_ms)}`, `${m.tokens} token${m.tokens === 1 ? "" : "s"}`].join(" · ");
  };
  async function refreshWinRates() {
    const r = await fetch(form.dataset.winRatesUrl, { credentials: "same-origin" });
    if (r.ok) renderWinRates(await r.json());
  }

  function reset() {
    session = null; columnKeys = []; openRound = null; columns.replaceChildren();
    voteBar.classList.add("hidden"); voteResult.classList.add("hidden"); voteResult.textContent = "";
  }
  // Why no vote bar: a vote compares exactly two models (and a blind round is always two).
  function showVoteHint() {
    const ticked = form.querySelectorAll("[name=contestant]:checked").length;
    const blind = document.getElementById("blind").checked;
    let hint = "";
    if (ticked > 2) hint = blind ? "A blind round compares two models; untick one." : "Votes compare two models; untick one to vote.";
    else if (ticked < 2) hint = "Tick two models to compare and vote.";
    voteHint.textContent = hint; voteHint.classList.toggle("hidden", !hint);
  }
  // A new selection of models (or of blind mode) starts a new comparison: ask before clearing answers on screen.
  form.querySelectorAll("[name=contestant], #blind").forEach((box) => box.addEventListener("change", () => {
    if (columns.querySelector(".turn") && !window.confirm(
        "Changing the models or blind mode starts a new comparison and clears the answers on screen. Continue?")) {
      box.checked = !box.checked;  // keep the conversation as it was
      return;
    }
    reset(); showVoteHint();
  }));
  showVoteHint();

  // Enter sends (Shift+Enter is a new line); Ctrl/Cmd+Enter sends too. Not while an input method composes.
  promptBox.addEventListener("keydown", (ev) => {
    if (ev.key !== "Enter" || ev.isComposing || (ev.shiftKey && !ev.ctrlKey && !ev.metaKey)) return;
    ev.preventDefault();
    if (!document.getElementById("ask").disabled) form.requestSubmit();
  });

  function buildColumns(keys, answers, blind) {
    columns.replaceChildren(); columnKeys = keys;
    columns.style.display = "grid"; columns.style.gap = "16px";
    columns.style.gridTemplateColumns = `repeat(${keys.length}, minmax(0, 1fr))`;
    keys.forEach((key, i) => {
      const section = el("section", "card");
      section.append(el("h2", null, blind ? `Model ${"ABC"[i]}` : answers[i].model.name));
      const transcript = el("div", "transcript"); transcript.id = "side-" + key;
      section.append(transcript); columns.append(section);
    });
  }

  function addTurn(key, prompt) {
    const turn = el("div", "turn");
    const answer = el("div", "answer pending");
    // Screen readers announce each answer once it is complete (busy while it streams).
    answer.setAttribute("aria-live", "polite"); answer.setAttribute("aria-busy", "true");
    turn.append(el("div", "who", "You: " + prompt), answer, el("div", "reveal hint"));
    document.getElementById("side-" + key).append(turn);
    return turn;
  }

  // The API states a pair's rate for its first model, the base where there is one; a user asks how the adapter
  // does, so a row is turned round to the adapter's side (against another adapter: this page's job's side).
  // (Wilson intervals are symmetric: the other side's interval is 1 − high to 1 − low.)
  function adapterFirst(r) {
    const flip = r.model.kind === "base" ? r.opponent.kind !== "base"
      : r.opponent.kind !== "base" && r.opponent.id === form.dataset.jobId;
    if (!flip) return r;
    return { ...r, model: r.opponent, opponent: r.model, wins: r.losses, losses: r.wins,
             win_rate: 1 - r.win_rate, ci_low: 1 - r.ci_high, ci_high: 1 - r.ci_low };
  }

  function renderWinRates(rows) {
    const body = document.querySelector("#win-rates tbody");
    body.replaceChildren();
    if (!rows.length) {
      const tr = el("tr"); const td = el("td", "hint", "No votes yet."); td.colSpan = 8; tr.append(td); body.append(tr);
      return;
    }
    const pct = (x) => (100 * x).toFixed(0) + "%";
    // Each cell carries its column's name (data-label): on a phone a row reads as a card.
    const labels = [...document.querySelectorAll("#win-rates thead th")].map((th) => th.textContent);
    for (const r of rows.map(adapterFirst)) {
      const tr = el("tr");
      const cells = [r.model.name, r.opponent.name, r.wins, r.losses, r.ties, r.both_bad, r.n,
                     `${r.model.name} wins ${pct(r.win_rate)} against ${r.opponent.name}; ` +
                     `95% CI ${pct(r.ci_low)}–${pct(r.ci_high)}`];
      cells.forEach((cell, i) => {
        const td = el("td", null, String(cell)); td.dataset.label = labels[i] || ""; tr.append(td);
      });
      body.append(tr);
    }
  }
  renderWinRates(JSON.parse(document.getElementById("win-rates-data").textContent));

  voteBar.addEventListener("click", async (ev) => {
    const choice = ev.target.dataset && ev.target.dataset.choice;
    if (!choice || !openRound) return;
    err.textContent = "";
    voteBar.querySelectorAll("button").forEach((b) => { b.disabled = true; });
    try {
      const r = await post(`${form.dataset.voteBase}${openRound.id}/vote/`, { choice });
      const data = await r.json();
      if (!r.ok) { showError(data); voteBar.querySelectorAll("button").forEach((b) => { b.disabled = false; }); return; }
      const names = data.slots.map((s) => s.model.name);
      data.slots.forEach((s) => { openRound.turns[s.position].querySelector(".reveal").textContent = "— " + s.model.name; });
      const verdict = { left: `${names[0]} (left) is better`, right: `${names[1]} (right) is better`,
                        tie: "a tie", both_bad: "both bad" }[choice];
      voteResult.textContent = `Your vote: ${verdict}. Left was ${names[0]}, right was ${names[1]}.`;
      voteResult.classList.remove("hidden"); voteBar.classList.add("hidden");
      openRound = null;
      const counter = document.querySelector(`#vote-counts [data-count=${choice === "left" || choice === "right" ? "usable" : choice}]`);
      if (counter) counter.textContent = String(Number(counter.textContent) + 1);
      await refreshWinRates();
    } catch (e) { err.textContent = "Could not reach the server: " + e; }
  });

  stopButton.addEventListener("click", async () => {
    if (!session) return;
    stopButton.disabled = true;
    try { await post(`${form.dataset.eventsBase}${session}/stop/`, {}); }
    catch (e) { err.textContent = "Could not reach the server: " + e; stopButton.disabled = false; }
  });

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    err.textContent = "";
    const prompt = form.prompt.value.trim();
    if (!prompt) { err.textContent = "Type a message first."; return; }
    const contestants = [...form.querySelectorAll("[name=contestant]:checked")].map((b) => b.value);
    const blind = document.getElementById("blind").checked;
    const body = { prompt, contestants, blind, max_new_tokens: +form.max_new_tokens.value,
                   temperature: +form.temperature.value, top_p: +form.top_p.value, seed: +form.seed.value,
                   system_prompt: form.system_prompt.value };
    if (session) body.session = session;
    const button = document.getElementById("ask"); button.disabled = true;
    voteBar.classList.add("hidden"); voteResult.classList.add("hidden"); voteResult.textContent = ""; openRound = null;
    if (blind) columns.querySelectorAll(".reveal").forEach((r) => { r.textContent = ""; });
    try {
      const r = await post(form.dataset.askUrl, body);
      const data = await r.json();
      if (!r.ok) { showError(data); button.disabled = false; return; }
      session = data.session;
      const answers = [...data.answers].sort((a, b) => a.position - b.position);  // left to right
      const keys = answers.map((a) => columnKey(a, data.blind));
      if (keys.join() !== columnKeys.join()) buildColumns(keys, answers, data.blind);
      const byId = {}; const turns = {};
      answers.forEach((answer, i) => {
        const turn = addTurn(keys[i], prompt); turns[i] = turn; byId[answer.id] = turn.querySelector(".answer");
      });
      const qs = answers.map((a) => "answer=" + a.id).join("&");
      const source = new EventSource(`${form.dataset.eventsBase}${session}/events/?${qs}`);
      stopButton.disabled = false; stopButton.classList.remove("hidden");
      let open = keys.length; let failed = false;
      const finish = () => {
        if (--open > 0) return;
        source.close(); button.disabled = false; form.prompt.value = "";
        stopButton.classList.add("hidden");
        if (keys.length === 2 && !failed) {  // a vote compares two finished answers
          openRound = { id: data.round, turns };
          voteBar.querySelectorAll("button").forEach((b) => { b.disabled = false; });
          voteBar.classList.remove("hidden");
        }
      };
      source.addEventListener("token", (e) => { const m = JSON.parse(e.data); byId[m.answer].textContent += m.text; });
      source.addEventListener("done", (e) => {
        const m = JSON.parse(e.data); const box = byId[m.answer];
        box.textContent = m.text; box.classList.remove("pending"); box.setAttribute("aria-busy", "false");
        if (m.total_ms !== undefined) box.after(el("div", "hint answer-stats", answerStats(m)));
        if (m.stopped) { box.classList.add("stopped"); box.append(el("span", "hint", " (stopped)")); }
        if (m.note) box.after(el("div", "hint note", m.note));
        finish();
      });
      source.addEventListener("error", (e) => {
        if (!e.data) return;  // connection-level errors carry no data; EventSource retries
        const m = JSON.parse(e.data); const box = byId[m.answer];
        box.textContent = "(" + m.error + ")"; box.classList.remove("pending"); box.setAttribute("aria-busy", "false");
        failed = true; finish();
      });
    } catch (e) { err.textContent = "Could not reach the server: " + e; button.disabled = false; }
  });

  // "Make a preference dataset from my votes": the same REST call as any client; the page stays as it is.
  const votesForm = document.getElementById("votes-dataset-form");
  if (votesForm) votesForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const result = document.getElementById("votes-dataset-result");
    const button = votesForm.querySelector("button");
    button.disabled = true; result.textContent = "Making the dataset…"; result.className = "";
    try {
      const body = { base_model: votesForm.dataset.baseModel };
      const name = votesForm.querySelector("[name=name]").value.trim();
      if (name) body.name = name;
      const r = await post(votesForm.dataset.apiUrl, body);
      const data = await r.json();
      if (!r.ok) {
        result.className = "errors";
        result.textContent = data.error ? data.error.message : Object.values(data).flat().join(" ");
        return;
      }
      const parts = Object.entries(data.left_out).map(([k, n]) => `${n} ${k.replace(/_/g, " ")}`);
      result.textContent = `${data.used} vote${data.used === 1 ? "" : "s"} became preference pairs` +
        (parts.length ? `; left out: ${parts.join(", ")}. ` : ". ");
      const link = el("a", "", `Open ${data.name}`); link.href = data.url; result.append(link);
    } finally { button.disabled = false; }
  });
})();
