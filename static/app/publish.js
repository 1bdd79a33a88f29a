// Job page, "Publish to Hugging Face" card: sends the form to POST /api/v1/jobs/<id>/publish/ (the token goes
// in that one request and is cleared from the field at once), shows a refusal beside the form in plain words
// with the field focused, and follows the job's pushes (GET the same address) until each is done or failed.
(function () {
  const card = document.getElementById("publish");
  if (!card) return;
  const form = document.getElementById("publish-form");
  const errorBox = document.getElementById("publish-error");
  const list = document.getElementById("publish-list");
  const csrf = form.querySelector("[name=csrfmiddlewaretoken]").value;
  const url = card.dataset.publishUrl;
  const WORKING = ["pending", "running"];
  const FIELDS = { repo_id: "publish-repo", token: "publish-token", what: "publish-what", private: "publish-private" };

  function describe(p) {
    if (p.status === "done") return "published";
    if (p.status === "failed") return `failed: ${p.error}`;
    return p.status === "running" ? "uploading…" : "waiting for the background worker…";
  }

  function item(p) {
    const li = document.createElement("li");
    li.dataset.publishId = p.id;
    li.dataset.status = p.status;
    const what = document.createElement("b");
    what.textContent = p.what + (p.quantization ? ` ${p.quantization}` : "");
    li.append(what, ` → ${p.repo_id}${p.private ? " (private)" : ""} `);
    const status = document.createElement("span");
    status.className = "publish-status";
    status.setAttribute("role", "status");
    status.textContent = describe(p);
    li.append(status);
    if (p.url) {
      const a = document.createElement("a");
      a.className = "publish-link";
      a.href = p.url;
      a.rel = "noopener";
      a.textContent = p.url;
      li.append(" ", a);
    }
    return li;
  }

  function showError(body) {
    let field = null, message = "The publish failed; try again.";
    if (body && body.error && body.error.message) {
      field = body.error.field;
      message = body.error.message;
    } else if (body && typeof body === "object") {
      const [name, value] = Object.entries(body)[0] || [];
      if (name) { field = name; message = `${name}: ${Array.isArray(value) ? value.join(" ") : value}`; }
    }
    errorBox.textContent = message;
    errorBox.hidden = false;
    const input = document.getElementById(FIELDS[field] || "publish-repo");
    if (input) { input.setAttribute("aria-invalid", "true"); input.focus(); }
  }

  async function follow() {
    if (![...list.children].some((li) => WORKING.includes(li.dataset.status))) return;
    try {
      const r = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (!r.ok) throw new Error(String(r.status));
      const rows = await r.json();
      list.replaceChildren(...rows.slice(0, 10).map(item));
    } catch (err) { /* the next tick tries again */ }
    setTimeout(follow, 1500);
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    errorBox.hidden = true;
    form.querySelectorAll("[aria-invalid]").forEach((el) => el.removeAttribute("aria-invalid"));
    const token = document.getElementById("publish-token");
    const body = {
      repo_id: document.getElementById("publish-repo").value.trim(),
      token: token.value.trim(),
      what: document.getElementById("publish-what").value,
      private: document.getElementById("publish-private").checked,
    };
    const button = document.getElementById("publish-submit");
    button.disabled = true;
    try {
      const r = await fetch(url, {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": csrf },
        body: JSON.stringify(body),
      });
      const answer = await r.json().catch(() => null);
      if (!r.ok) { showError(answer); return; }
      token.value = ""; // sent once; not kept in the page either
      list.prepend(item(answer));
      setTimeout(follow, 1000);
    } catch (err) {
      showError(null);
    } finally {
      button.disabled = false;
    }
  });
  setTimeout(follow, 1000);
})();
