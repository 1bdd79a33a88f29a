"use strict";
// The top bar's Menu button at phone width shows and folds the site's links (a file, not inline: the CSP).
(() => {
  const button = document.querySelector("header.top .menu-toggle");
  if (!button) return;
  const header = button.closest("header");
  function setOpen(open) {
    header.classList.toggle("menu-open", open);
    button.setAttribute("aria-expanded", String(open));
  }
  button.addEventListener("click", () => setOpen(!header.classList.contains("menu-open")));
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && header.classList.contains("menu-open")) { setOpen(false); button.focus(); }
  });
})();
