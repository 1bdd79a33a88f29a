// Copy buttons: a button with data-copy="ID" puts the text of element ID on the clipboard and says so in
// the [data-copied] element beside it (one listener for the page, so parts redrawn later work too).
(function () {
  document.addEventListener("click", async (event) => {
    const button = event.target.closest("[data-copy]");
    if (!button) return;
    const source = document.getElementById(button.dataset.copy);
    const note = button.parentElement.querySelector("[data-copied]");
    try {
      await navigator.clipboard.writeText(source.textContent.trim());
      if (note) note.textContent = "Copied.";
    } catch (err) {
      window.getSelection().selectAllChildren(source);  // no clipboard access: select it for Ctrl+C
      if (note) note.textContent = "Selected: press Ctrl+C to copy.";
    }
  });
})();
