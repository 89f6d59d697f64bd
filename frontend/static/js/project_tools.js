// The project page's "Labels and exports" card: label categories, and the COCO import.
import { api, csrfToken, errorText } from "./api.js";

const card = document.getElementById("labels-exports");
const projectId = card.dataset.project;

document.getElementById("categories-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const status = document.getElementById("categories-status");
  const input = document.getElementById("categories-input");
  try {
    const data = await api(`/web/projects/${projectId}/categories/`, { method: "POST", json: { categories: input.value } });
    input.value = data.categories.join(", ");
    status.textContent = `Saved: ${data.categories.length} categor${data.categories.length === 1 ? "y" : "ies"}.`;
  } catch (err) {
    status.textContent = err.message;
  }
});

document.getElementById("import-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const status = document.getElementById("import-status");
  const file = document.getElementById("import-file").files[0];
  if (!file) return;
  const body = new FormData();
  body.append("file", file);
  status.textContent = "Importing…";
  const response = await fetch(`/web/projects/${projectId}/import/coco/`, {
    method: "POST",
    body,
    headers: { "X-CSRFToken": csrfToken(), Accept: "application/json" },
    credentials: "same-origin",
  });
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    status.textContent = `Not imported: ${errorText(data, response.status)}`;
    return;
  }
  const skipped = data.skipped.length ? ` ${data.skipped.length} skipped: ${data.skipped.join("; ")}.` : "";
  status.textContent = `Imported ${data.imported} reviewed mask${data.imported === 1 ? "" : "s"}.${skipped}`;
});
