// Destructive actions ask first: a form with data-confirm="question" submits only once confirmed.
document.addEventListener("submit", (ev) => {
  const question = ev.target.dataset && ev.target.dataset.confirm;
  if (question && !window.confirm(question)) ev.preventDefault();
});
