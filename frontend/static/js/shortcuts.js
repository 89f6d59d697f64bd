// The shortcut sheet: "?" opens it on every page; Esc closes it (the <dialog> does that).
import { isTyping } from "./api.js";

const sheet = document.getElementById("shortcut-sheet");

export function openShortcuts() {
  if (sheet && !sheet.open) sheet.showModal();
}

document.querySelectorAll("[data-open-shortcuts]").forEach((b) => b.addEventListener("click", openShortcuts));
document.addEventListener("keydown", (event) => {
  if (event.key === "?" && !isTyping(event) && !event.ctrlKey && !event.metaKey && !event.altKey) {
    event.preventDefault();
    openShortcuts();
  }
});
