// Destructive actions ask first: a form with data-confirm="question" submits only once confirmed.
document.addEventListener("submit", (ev) => {
  const question = ev.target.dataset && ev.target.dataset.confirm;
  if (question && !window.confirm(question)) ev.preventDefault();
});

// The same question asked inside the page rather than in a browser pop-up: askInPage(place, question, yes, no)
// shows the question with two buttons in `place` and resolves true for `yes`, false for `no` or Escape. The safe
// answer has the focus, so Enter never clears anything by accident; a newer question answers an open one "no".
window.askInPage = (place, question, yes, no) => new Promise((resolve) => {
  if (place.askInPageAnswer) place.askInPageAnswer(false);
  const box = document.createElement("div");
  box.className = "ask"; box.setAttribute("role", "alertdialog");
  const text = document.createElement("p"); text.textContent = question;
  text.id = `ask-${Date.now()}`; box.setAttribute("aria-labelledby", text.id);
  const yesButton = document.createElement("button"); yesButton.type = "button"; yesButton.textContent = yes;
  yesButton.className = "ask-yes";
  const noButton = document.createElement("button"); noButton.type = "button"; noButton.textContent = no;
  noButton.className = "ask-no button secondary";
  const answer = (value) => { place.askInPageAnswer = null; box.remove(); resolve(value); };
  place.askInPageAnswer = answer;
  yesButton.addEventListener("click", () => answer(true));
  noButton.addEventListener("click", () => answer(false));
  box.addEventListener("keydown", (ev) => { if (ev.key === "Escape") { ev.preventDefault(); answer(false); } });
  box.append(text, yesButton, noButton);
  place.replaceChildren(box);
  noButton.focus();
});
