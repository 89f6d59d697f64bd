// Project page: the image list with status tabs and search (no reload), and bulk expressions.
import { api, h, STATUS_LABELS } from "./api.js";
import { fillPipelineSelects } from "./pipelines.js";

const root = document.getElementById("image-browser");
const projectId = root.dataset.project;
const grid = document.getElementById("image-grid");
const empty = document.getElementById("image-empty");
const listError = document.getElementById("list-error");
const search = document.getElementById("image-q");
const tabs = [...root.querySelectorAll('[role="tab"]')];

const params = new URLSearchParams(window.location.search);
let status = params.get("status") || "";
let query = params.get("q") || "";
search.value = query;
let generation = 0;

function imageCard(image) {
  const st = image.status || "no_expression";
  return h(
    "li",
    { class: "image-card card" },
    h(
      "a",
      { href: `/images/${image.id}/`, class: "thumb-link" },
      h("img", {
        src: `/api/images/${image.id}/file/?max_side=320`,
        alt: image.original_name,
        loading: "lazy",
        width: image.width,
        height: image.height,
      }),
    ),
    h(
      "div",
      { class: "image-meta" },
      h("a", { href: `/images/${image.id}/`, class: "image-name", title: image.original_name }, image.original_name),
      h("span", { class: `badge badge-${st}` }, STATUS_LABELS[st] || st),
      h("span", { class: "muted small" }, `${image.width}×${image.height}`),
    ),
  );
}

async function refresh() {
  const mine = ++generation;
  tabs.forEach((t) => t.setAttribute("aria-selected", String(t.dataset.status === status)));
  const url = new URL(window.location.href);
  url.searchParams.set("status", status);
  url.searchParams.set("q", query);
  if (!status) url.searchParams.delete("status");
  if (!query) url.searchParams.delete("q");
  history.replaceState(null, "", url);
  grid.setAttribute("aria-busy", "true");
  const base = `/api/projects/${projectId}/images/`;
  const q = query ? `q=${encodeURIComponent(query)}` : "";
  try {
    const all = await api(`${base}?${q}`);
    if (mine !== generation) return;
    const counts = { "": all.length, no_expression: 0, queued: 0, needs_review: 0, done: 0 };
    for (const image of all) counts[image.status] = (counts[image.status] || 0) + 1;
    root.querySelectorAll("[data-count]").forEach((el) => {
      el.textContent = counts[el.dataset.count] ?? 0;
    });
    const shown = status ? await api(`${base}?status=${status}${q ? `&${q}` : ""}`) : all;
    if (mine !== generation) return;
    grid.replaceChildren(...shown.map(imageCard));
    empty.hidden = shown.length > 0;
    listError.hidden = true;
  } catch (err) {
    listError.textContent = `Could not load the images: ${err.message}`;
    listError.hidden = false;
  } finally {
    grid.setAttribute("aria-busy", "false");
  }
}

tabs.forEach((tab) =>
  tab.addEventListener("click", () => {
    status = tab.dataset.status;
    refresh();
  }),
);
let debounce = null;
search.addEventListener("input", () => {
  clearTimeout(debounce);
  debounce = setTimeout(() => {
    query = search.value.trim();
    refresh();
  }, 250);
});
document.getElementById("image-search").addEventListener("submit", (e) => {
  e.preventDefault();
  query = search.value.trim();
  refresh();
});

// Bulk expressions from a CSV or JSON file.
const bulkForm = document.getElementById("bulk-form");
const bulkResult = document.getElementById("bulk-result");
bulkForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const data = new FormData(bulkForm);
  const button = bulkForm.querySelector("button");
  button.disabled = true;
  bulkResult.replaceChildren(h("p", { class: "muted" }, "Reading the file…"));
  try {
    const result = await api(`/web/projects/${projectId}/expressions/bulk/`, { method: "POST", body: data });
    const items = [
      h("p", { class: "alert alert-ok" }, `${result.created.length} job${result.created.length === 1 ? "" : "s"} queued, ${result.errors.length} row${result.errors.length === 1 ? "" : "s"} rejected.`),
    ];
    if (result.errors.length) {
      items.push(
        h("ul", { class: "rejections" }, ...result.errors.map((e) => h("li", {}, `Row ${e.row}: ${e.error}`))),
      );
    }
    bulkResult.replaceChildren(...items);
    refresh();
  } catch (err) {
    bulkResult.replaceChildren(h("p", { class: "alert alert-error", role: "alert" }, err.message));
  } finally {
    button.disabled = false;
  }
});

// Members: add a user by name (POST /api/projects/{id}/members/).
const memberForm = document.getElementById("member-form");
memberForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const error = memberForm.querySelector(".form-error");
  error.hidden = true;
  try {
    const project = await api(`/api/projects/${projectId}/members/`, {
      method: "POST",
      json: { username: memberForm.elements.username.value.trim() },
    });
    document.getElementById("member-names").textContent = project.members.join(", ");
    memberForm.elements.username.value = "";
  } catch (err) {
    error.textContent = err.message;
    error.hidden = false;
  }
});

fillPipelineSelects();
refresh();
// Statuses change as workers finish: refresh the list now and then while the tab is visible.
setInterval(() => {
  if (document.visibilityState === "visible") refresh();
}, 10000);
