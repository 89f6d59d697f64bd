// The project page's "Labels and exports" card: label categories, and the COCO import.
import { api, csrfToken, errorText, h } from "./api.js";

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

// Team: share images among members; the progress table is redrawn from the answer.
document.getElementById("assign-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const status = document.getElementById("assign-status");
  const usernames = document.getElementById("assign-users").value.split(",").map((s) => s.trim()).filter(Boolean);
  try {
    const data = await api(`/web/projects/${projectId}/assign/`, {
      method: "POST",
      json: { usernames, only_unassigned: document.getElementById("assign-unassigned").checked },
    });
    status.textContent = `Assigned: ${Object.entries(data.assigned).map(([u, n]) => `${u} ${n}`).join(", ") || "nothing to assign"}.`;
    document.getElementById("team-rows").replaceChildren(
      ...data.team.map((row) =>
        h(
          "tr",
          {},
          h("th", { scope: "row" }, row.username),
          ...["assigned_images", "expressions", "decided", "approved", "sent_back", "checks"].map((k) => h("td", {}, String(row[k]))),
        ),
      ),
    );
  } catch (err) {
    status.textContent = err.message;
  }
});
