// Compare page: one prompt to the base and to the adapter; answers stream in as server-sent events.
(function () {
  const form = document.getElementById("compare-form");
  if (!form) return;
  let session = null;
  const csrf = form.querySelector("[name=csrfmiddlewaretoken]").value;
  function addTurn(side, prompt) {
    const turn = document.createElement("div"); turn.className = "turn";
    const who = document.createElement("div"); who.className = "who"; who.textContent = "You: " + prompt;
    const answer = document.createElement("div"); answer.className = "answer pending"; answer.dataset.side = side;
    turn.append(who, answer); document.getElementById("side-" + side).append(turn);
    return answer;
  }
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const err = document.getElementById("compare-error"); err.textContent = "";
    const prompt = form.prompt.value.trim();
    if (!prompt) { err.textContent = "Type a message first."; return; }
    const body = { prompt, max_new_tokens: +form.max_new_tokens.value, temperature: +form.temperature.value,
                   top_p: +form.top_p.value, seed: +form.seed.value, system_prompt: form.system_prompt.value };
    if (session) body.session = session;
    const button = document.getElementById("ask"); button.disabled = true;
    try {
      const r = await fetch(form.dataset.askUrl, { method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRFToken": csrf }, body: JSON.stringify(body) });
      const data = await r.json();
      if (!r.ok) { err.textContent = `${data.error.field}: ${data.error.message}`; button.disabled = false; return; }
      session = data.session;
      const boxes = { base: addTurn("base", prompt), adapter: addTurn("adapter", prompt) };
      const byId = {}; for (const [side, id] of Object.entries(data.answers)) byId[id] = boxes[side];
      const qs = Object.values(data.answers).map((id) => "answer=" + id).join("&");
      const source = new EventSource(`${form.dataset.eventsBase}${session}/events/?${qs}`);
      let open = Object.keys(byId).length;
      const finish = () => { if (--open === 0) { source.close(); button.disabled = false; form.prompt.value = ""; } };
      source.addEventListener("token", (e) => { const m = JSON.parse(e.data); byId[m.answer].textContent += m.text; });
      source.addEventListener("done", (e) => {
        const m = JSON.parse(e.data); const box = byId[m.answer];
        box.textContent = m.text; box.classList.remove("pending"); finish();
      });
      source.addEventListener("error", (e) => {
        if (!e.data) return;  // connection-level errors carry no data; EventSource retries
        const m = JSON.parse(e.data); const box = byId[m.answer];
        box.textContent = "(" + m.error + ")"; box.classList.remove("pending"); finish();
      });
    } catch (e) { err.textContent = "Could not reach the server: " + e; button.disabled = false; }
  });
})();
