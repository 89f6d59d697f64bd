// Upload page: one request per file so each gets its own progress bar (XMLHttpRequest upload
// progress); at most two uploads at a time. Each file's row ends with what the server did with it:
// stored, recognised as a duplicate, or rejected with the server's reason.
import { csrfToken, errorText, h } from "./api.js";

const root = document.getElementById("uploader");
const projectId = root.dataset.project;
const maxBytes = Number(root.dataset.maxBytes || 0);
const list = document.getElementById("upload-list");
const summary = document.getElementById("upload-summary");
const dropzone = document.getElementById("dropzone");
const input = document.getElementById("file-input");

const CONCURRENCY = 2;
const queue = [];
let running = 0;
const totals = { stored: 0, duplicates: 0, rejected: 0, files: 0 };

function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

function updateSummary() {
  summary.textContent =
    `${totals.files} file${totals.files === 1 ? "" : "s"}: ${totals.stored} stored, ` +
    `${totals.duplicates} duplicate${totals.duplicates === 1 ? "" : "s"}, ${totals.rejected} rejected.`;
}

function addRow(file) {
  const bar = h("progress", { max: "100", value: "0", "aria-label": `Upload progress of ${file.name}` });
  const state = h("div", { class: "upload-state" }, "Waiting…");
  const details = h("ul", { class: "upload-details" });
  const row = h(
    "li",
    { class: "upload-row card", dataset: { name: file.name } },
    h("div", { class: "upload-head" }, h("strong", { class: "upload-name" }, file.name), h("span", { class: "muted small" }, formatBytes(file.size))),
    bar,
    state,
    details,
  );
  list.prepend(row);
  return { row, bar, state, details };
}

function describe(ui, result) {
  const images = result.images || [];
  const rejected = result.rejected || [];
  const stored = images.filter((i) => !i.duplicate);
  const dupes = images.filter((i) => i.duplicate);
  totals.stored += stored.length;
  totals.duplicates += dupes.length;
  totals.rejected += rejected.length;
  const parts = [];
  if (stored.length) parts.push(`${stored.length} stored`);
  if (dupes.length) parts.push(`${dupes.length} already in the project`);
  if (rejected.length) parts.push(`${rejected.length} rejected`);
  ui.state.textContent = parts.join(", ") || "Nothing to store in this file.";
  ui.row.classList.add(rejected.length && !images.length ? "is-error" : rejected.length ? "is-partial" : "is-ok");
  for (const image of images) {
    ui.details.append(
      h(
        "li",
        { class: image.duplicate ? "dup" : "ok" },
        h("a", { href: `/images/${image.id}/` }, image.original_name),
        image.duplicate ? " — duplicate: the same picture is already stored, kept once" : ` — stored (${image.width}×${image.height})`,
      ),
    );
  }
  for (const bad of rejected) {
    // The server's message usually names the file already; name it once.
    const named = bad.error.startsWith(bad.name);
    ui.details.append(
      h("li", { class: "bad", role: "alert" }, named ? "" : h("strong", {}, bad.name), named ? bad.error : ` — ${bad.error}`),
    );
  }
}

function fail(ui, message) {
  totals.rejected += 1;
  ui.row.classList.add("is-error");
  ui.bar.value = 100;
  ui.state.textContent = "Rejected";
  ui.details.append(h("li", { class: "bad", role: "alert" }, h("strong", {}, ui.row.dataset.name), ` — ${message}`));
}

function upload(file, ui) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/api/projects/${projectId}/images/`);
    xhr.setRequestHeader("X-CSRFToken", csrfToken());
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) {
        ui.bar.value = Math.round((100 * e.loaded) / e.total);
        ui.state.textContent = e.loaded < e.total ? `Uploading… ${ui.bar.value}%` : "Checking the file…";
      }
    });
    xhr.addEventListener("load", () => {
      ui.bar.value = 100;
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        body = null;
      }
      if (xhr.status >= 200 && xhr.status < 300 && body) describe(ui, body);
      else if (body && (body.rejected || body.images)) describe(ui, body);
      else fail(ui, errorText(body, xhr.status));
      resolve();
    });
    xhr.addEventListener("error", () => {
      fail(ui, "The upload was interrupted: the server could not be reached.");
      resolve();
    });
    const form = new FormData();
    form.append("files", file, file.name);
    ui.state.textContent = "Uploading…";
    xhr.send(form);
  });
}

async function pump() {
  while (running < CONCURRENCY && queue.length) {
    const { file, ui } = queue.shift();
    running += 1;
    upload(file, ui).finally(() => {
      running -= 1;
      updateSummary();
      pump();
    });
  }
}

function addFiles(files) {
  for (const file of files) {
    totals.files += 1;
    const ui = addRow(file);
    if (maxBytes && file.size > maxBytes) {
      fail(ui, `The file is ${formatBytes(file.size)}, over the upload limit of ${formatBytes(maxBytes)}.`);
      continue;
    }
    queue.push({ file, ui });
  }
  updateSummary();
  pump();
}

input.addEventListener("change", () => {
  addFiles([...input.files]);
  input.value = "";
});
["dragenter", "dragover"].forEach((type) =>
  dropzone.addEventListener(type, (e) => {
    e.preventDefault();
    dropzone.classList.add("is-over");
  }),
);
["dragleave", "drop"].forEach((type) =>
  dropzone.addEventListener(type, (e) => {
    e.preventDefault();
    dropzone.classList.remove("is-over");
  }),
);
dropzone.addEventListener("drop", (e) => addFiles([...(e.dataTransfer?.files || [])]));
// A drop outside the zone must not navigate away from the page.
window.addEventListener("dragover", (e) => e.preventDefault());
window.addEventListener("drop", (e) => e.preventDefault());
