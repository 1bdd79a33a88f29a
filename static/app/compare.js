// Compare page: one prompt to two or three models at once; answers stream in as server-sent events.
// A chat goes on until "New chat" (or a new choice of models or mode): each model continues its own conversation.
// Blind test: the server draws the two models' order anew each round and names them only in its answer to that
// round's vote, and a blind round carries no history. So each blind round is a battle of its own: its columns hold
// only its answers, and earlier rounds move to a list below, named once they were voted on.
// Nothing here opens a browser pop-up: a question is asked in the page (askInPage, confirm.js).
// It speaks the REST API (/api/v1/) like any client, signed in by the session cookie plus CSRF.
(function () {
  const form = document.getElementById("compare-form");
  if (!form) return;
  const csrf = form.querySelector("[name=csrfmiddlewaretoken]").value;
  const columns = document.getElementById("columns");
  const voteBar = document.getElementById("vote-bar");
  const voteResult = document.getElementById("vote-result");
  const err = document.getElementById("compare-error");
  const askButton = document.getElementById("ask");
  const stopButton = document.getElementById("stop");
  const voteHint = document.getElementById("vote-hint");
  const promptBox = document.getElementById("prompt");
  const blindBox = document.getElementById("blind");
  const roundLabel = document.getElementById("round-label");
  const blindLog = document.getElementById("blind-log");
  const blindRounds = document.getElementById("blind-rounds");
  const changeQuestion = document.getElementById("change-question");
  const choiceBoxes = [...form.querySelectorAll("[name=contestant], #blind")];
  let session = null;        // the chat on screen; null: the next message starts a new one, without history
  let columnKeys = [];       // the answer keys the columns were built for, left to right
  let shownRound = null;     // {id, blind, number, prompt, turns: {position: turn element}, voted} in the columns
  let openRound = null;      // the shown round while it awaits a vote
  let live = null;           // {source, session, open}: the answers streaming now
  let chat = 0;              // counts chats, so an answer that arrives after "New chat" is dropped
  let blindCount = 0;        // blind rounds in this chat
  let chosen = choiceBoxes.map((b) => b.checked);  // the models and mode of the chat on screen
  let asking = false;        // the in-page question about a new chat is open

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
  const letter = (position) => "ABC"[position];
  // A column's key: its letter in a blind round, else who answers in it: "base", "adapter" (this page's
  // job) or another job's id.
  const columnKey = (answer, blind) => {
    if (blind) return letter(answer.position);
    if (answer.model.kind === "base") return "base";
    return answer.model.id === form.dataset.jobId ? "adapter" : answer.model.id;
  };
  // "first token 0.4 s · total 1.9 s · 12 tokens", as the infer worker timed the answer.
  const answerStats = (m) => {
    const secs = (ms) => (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + " s";
    return [m.first_token_ms === null ? "no text" : `first token ${secs(m.first_token_ms)}`,
            `total ${secs(m.total_ms)}`, `${m.tokens} token${m.tokens === 1 ? "" : "s"}`].join(" · ");
  };
  const quoted = (prompt) => `“${prompt.length > 60 ? prompt.slice(0, 59) + "…" : prompt}”`;
  async function refreshWinRates() {
    const r = await fetch(form.dataset.winRatesUrl, { credentials: "same-origin" });
    if (r.ok) renderWinRates(await r.json());
  }

  function hideVote() {
    voteBar.classList.add("hidden"); voteResult.classList.add("hidden"); voteResult.textContent = "";
  }
  // "New chat": the screen empties and the next message goes without the conversation so far. Answers still
  // streaming are stopped, as the Stop button would.
  function newChat() {
    chat += 1;
    if (live) {
      live.source.close();
      if (live.open > 0) post(`${form.dataset.eventsBase}${live.session}/stop/`, {}).catch(() => {});
      live = null;
    }
    session = null; columnKeys = []; shownRound = null; openRound = null; blindCount = 0;
    columns.replaceChildren(); blindRounds.replaceChildren(); blindLog.classList.add("hidden");
    roundLabel.classList.add("hidden"); roundLabel.textContent = ""; hideVote();
    askButton.disabled = false; stopButton.classList.add("hidden"); err.textContent = "";
  }
  document.getElementById("new-chat").addEventListener("click", () => { newChat(); promptBox.focus(); });

  // Why no vote bar: a vote compares exactly two models (and a blind round is always two).
  function showVoteHint() {
    const ticked = form.querySelectorAll("[name=contestant]:checked").length;
    let hint = "";
    if (ticked > 2) hint = blindBox.checked ? "A blind test compares two models; untick one." : "Votes compare two models; untick one to vote.";
    else if (ticked < 2) hint = "Tick two models to compare and vote.";
    voteHint.textContent = hint; voteHint.classList.toggle("hidden", !hint);
  }
  // Other models or another mode make a new chat: with answers on screen, ask first (in the page) and put the
  // boxes back as they were if the answer is to keep this chat.
  choiceBoxes.forEach((box) => box.addEventListener("change", async () => {
    showVoteHint();
    if (asking) return;  // the open question covers this change too
    if (!columns.querySelector(".turn") && !blindRounds.children.length) {
      chosen = choiceBoxes.map((b) => b.checked); newChat(); return;
    }
    asking = true;
    const fresh = await window.askInPage(changeQuestion,
      "Other models or another mode start a new chat: the answers on screen are cleared.",
      "Start a new chat", "Keep this chat");
    asking = false;
    if (fresh) { chosen = choiceBoxes.map((b) => b.checked); newChat(); }
    else choiceBoxes.forEach((b, i) => { b.checked = chosen[i]; });
    showVoteHint();
  }));
  showVoteHint();

  // Enter sends (Shift+Enter is a new line); Ctrl/Cmd+Enter sends too. Not while an input method composes.
  promptBox.addEventListener("keydown", (ev) => {
    if (ev.key !== "Enter" || ev.isComposing || (ev.shiftKey && !ev.ctrlKey && !ev.metaKey)) return;
    ev.preventDefault();
    if (!askButton.disabled) form.requestSubmit();
  });

  function buildColumns(keys, answers, blind) {
    columns.replaceChildren(); columnKeys = keys;
    columns.style.display = "grid"; columns.style.gap = "16px";
    columns.style.gridTemplateColumns = `repeat(${keys.length}, minmax(0, 1fr))`;
    keys.forEach((key, i) => {
      const section = el("section", "card");
      section.append(el("h2", null, blind ? `Model ${letter(i)}` : answers[i].model.name));
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

  // A finished blind round goes to the list of earlier rounds: who was who once voted, else nobody.
  function logBlindRound(round, names, verdict) {
    const said = names
      ? `Model A was ${names[0]}, Model B was ${names[1]}. Your vote: ${verdict}.`
      : "No vote, so its models stay unnamed.";
    const item = el("li", null, `Round ${round.number} (${quoted(round.prompt)}): ${said}`);
    item.dataset.round = round.id;
    blindRounds.append(item); blindLog.classList.remove("hidden");
  }

  // Each row comes from the server from this page's adapter's side (else the adapter's against the base), with its
  // plain-words summary; the statistics behind the range are a tooltip.
  function renderWinRates(rows) {
    const table = document.getElementById("win-rates");
    const body = table.querySelector("tbody");
    body.replaceChildren();
    if (!rows.length) {
      const tr = el("tr"); const td = el("td", "hint", "No votes yet."); td.colSpan = 8; tr.append(td); body.append(tr);
      return;
    }
    const pct = (x) => (100 * x).toFixed(0) + " %";
    // Each cell carries its column's name (data-label): on a phone a row reads as a card.
    const labels = [...document.querySelectorAll("#win-rates thead th")].map((th) => th.textContent);
    for (const r of rows) {
      const tr = el("tr");
      [r.model.name, r.opponent.name, r.wins, r.losses, r.ties, r.both_bad, r.n].forEach((cell, i) => {
        const td = el("td", null, String(cell)); td.dataset.label = labels[i] || ""; tr.append(td);
      });
      const summary = el("td", "win-rate-summary", r.summary);
      summary.dataset.label = labels[7] || "";
      summary.title = `${table.dataset.rangeHint} Here: ${pct(r.win_rate)}, range ${pct(r.ci_low)} to ${pct(r.ci_high)}.`;
      tr.append(summary); body.append(tr);
    }
  }
  renderWinRates(JSON.parse(document.getElementById("win-rates-data").textContent));

  voteBar.addEventListener("click", async (ev) => {
    const choice = ev.target.dataset && ev.target.dataset.choice;
    const round = openRound;
    if (!choice || !round) return;
    err.textContent = "";
    voteBar.querySelectorAll("button").forEach((b) => { b.disabled = true; });
    try {
      const r = await post(`${form.dataset.voteBase}${round.id}/vote/`, { choice });
      const data = await r.json();
      if (!r.ok) { showError(data); voteBar.querySelectorAll("button").forEach((b) => { b.disabled = false; }); return; }
      round.voted = true;
      if (round === openRound) {  // still on screen (no new chat meanwhile)
        openRound = null; voteBar.classList.add("hidden");
        const names = data.slots.map((s) => s.model.name);
        if (round.blind) {
          const verdict = { left: "Model A is better", right: "Model B is better", tie: "a tie", both_bad: "both bad" }[choice];
          columns.querySelectorAll("h2").forEach((h, i) => { h.textContent = `Model ${letter(i)} was ${names[i]}`; });
          voteResult.textContent = `Your vote: ${verdict}. Model A was ${names[0]}, Model B was ${names[1]}.`;
          logBlindRound(round, names, verdict);
        } else {
          data.slots.forEach((s) => { round.turns[s.position].querySelector(".reveal").textContent = "— " + s.model.name; });
          const verdict = { left: `${names[0]} (left) is better`, right: `${names[1]} (right) is better`,
                            tie: "a tie", both_bad: "both bad" }[choice];
          voteResult.textContent = `Your vote: ${verdict}. Left was ${names[0]}, right was ${names[1]}.`;
        }
        voteResult.classList.remove("hidden");
      }
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
    if (asking) { err.textContent = "First answer the question above: start a new chat or keep this one."; return; }
    const prompt = form.prompt.value.trim();
    if (!prompt) { err.textContent = "Type a message first."; return; }
    const contestants = [...form.querySelectorAll("[name=contestant]:checked")].map((b) => b.value);
    const blind = blindBox.checked;
    const body = { prompt, contestants, blind, max_new_tokens: +form.max_new_tokens.value,
                   temperature: +form.temperature.value, top_p: +form.top_p.value, seed: +form.seed.value,
                   system_prompt: form.system_prompt.value };
    if (session) body.session = session;
    const thisChat = chat;
    askButton.disabled = true;
    try {
      const r = await post(form.dataset.askUrl, body);
      const data = await r.json();
      if (thisChat !== chat) {  // "New chat" while the round was being asked: it belongs to no chat on screen
        if (r.ok) post(`${form.dataset.eventsBase}${data.session}/stop/`, {}).catch(() => {});
        return;
      }
      if (!r.ok) { showError(data); askButton.disabled = false; return; }
      session = data.session;
      hideVote();
      if (shownRound && shownRound.blind && !shownRound.voted) logBlindRound(shownRound, null);
      openRound = null;
      const answers = [...data.answers].sort((a, b) => a.position - b.position);  // left to right
      const keys = answers.map((a) => columnKey(a, data.blind));
      // A blind round's models are drawn anew: its columns start empty, whatever the last round's letters were.
      if (data.blind || keys.join() !== columnKeys.join()) buildColumns(keys, answers, data.blind);
      if (data.blind) {
        blindCount += 1;
        roundLabel.textContent = `Blind round ${blindCount}: the two models in a new random order` +
          (blindCount > 1 ? "; earlier rounds are listed below the vote." : ".");
      }
      roundLabel.classList.toggle("hidden", !data.blind);
      const byId = {}; const turns = {};
      answers.forEach((answer, i) => {
        const turn = addTurn(keys[i], prompt); turns[i] = turn; byId[answer.id] = turn.querySelector(".answer");
      });
      const round = { id: data.round, blind: data.blind, number: blindCount, prompt, turns, voted: false };
      shownRound = round;
      const qs = answers.map((a) => "answer=" + a.id).join("&");
      const source = new EventSource(`${form.dataset.eventsBase}${session}/events/?${qs}`);
      live = { source, session, open: keys.length };
      const stream = live;
      stopButton.disabled = false; stopButton.classList.remove("hidden");
      let failed = false;
      const finish = () => {
        if (--stream.open > 0) return;
        source.close(); live = null; askButton.disabled = false; form.prompt.value = "";
        stopButton.classList.add("hidden");
        if (keys.length === 2 && !failed) {  // a vote compares two finished answers
          openRound = round;
          voteBar.querySelector("[data-choice=left]").textContent = round.blind ? "A is better" : "Left is better";
          voteBar.querySelector("[data-choice=right]").textContent = round.blind ? "B is better" : "Right is better";
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
    } catch (e) {
      if (thisChat === chat) { err.textContent = "Could not reach the server: " + e; askButton.disabled = false; }
    }
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
