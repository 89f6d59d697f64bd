// The review loop: one item is one expression on one image. The page loads the item list once,
// then moves between items without reloading: the scaled image, the candidates (COCO RLE decoded
// here), and any work in progress kept in localStorage. Decisions post a Review through the API.
import { api, h, isTyping, toast } from "./api.js";
import { MaskEditor } from "./editor.js";
import { ACTIVE, JobStatus } from "./jobs.js";
import { Overlay, cssColor } from "./overlay.js";
import { decodeRle } from "./rle.js";
import { clearWip, loadWip, saveWip } from "./wip.js";

const root = document.getElementById("review");
const projectId = root.dataset.project;
const stage = document.getElementById("stage");
const stageImage = document.getElementById("stage-image");
const stageEmpty = document.getElementById("stage-empty");
const overlay = new Overlay(document.getElementById("overlay"));
const pointsLayer = document.getElementById("points");
const cursor = document.getElementById("brush-cursor");
const candList = document.getElementById("candidates");
const el = (id) => document.getElementById(id);

const state = {
  items: [],
  index: -1,
  item: null,
  candidates: [], // API candidates of the item's job
  masks: [], // decoded row-major masks, one per candidate
  chosen: -1,
  editor: null, // MaskEditor when correcting
  editFrom: null, // candidate id the correction started from
  tool: null, // "brush" | "eraser" | "refine" | null
  brush: 18, // radius in screen pixels
  hidden: false,
  showScores: false,
  points: [], // [[x, y, label]] in image pixels for SAM refine
  refine: { pending: null, queued: false, generation: 0 },
  jobStatus: null,
  busy: false,
  loadToken: 0,
};

// ---------------------------------------------------------------- items

async function loadItems() {
  const data = await api(`/web/projects/${projectId}/review/items/`);
  state.items = data.items;
}

function startIndex() {
  const wantExpr = Number(root.dataset.startExpression || new URLSearchParams(location.search).get("expression"));
  const wantImage = Number(root.dataset.startImage || new URLSearchParams(location.search).get("image"));
  if (wantExpr) {
    const i = state.items.findIndex((it) => it.expression_id === wantExpr);
    if (i >= 0) return i;
  }
  if (wantImage) {
    const i = state.items.findIndex((it) => it.image_id === wantImage && !it.review);
    if (i >= 0) return i;
    const j = state.items.findIndex((it) => it.image_id === wantImage);
    if (j >= 0) return j;
  }
  const open = state.items.findIndex((it) => !it.review && it.job && it.job.state === "succeeded");
  return open >= 0 ? open : 0;
}

function imageSide() {
  const rect = stage.parentElement.getBoundingClientRect();
  const side = Math.max(rect.width, rect.height) * (window.devicePixelRatio || 1);
  return Math.min(4096, Math.max(512, Math.ceil(side / 256) * 256));
}

async function showItem(index) {
  if (!state.items.length) {
    el("item-text").textContent = "Nothing to review yet";
    stageEmpty.textContent = "No expression in this project yet: open an image and type one.";
    stageEmpty.hidden = false;
    stage.hidden = true;
    return;
  }
  index = Math.max(0, Math.min(state.items.length - 1, index));
  const token = ++state.loadToken;
  if (state.jobStatus) state.jobStatus.stop();
  state.index = index;
  const item = state.items[index];
  state.item = item;
  state.candidates = [];
  state.masks = [];
  state.chosen = -1;
  state.editor = null;
  state.editFrom = null;
  state.points = [];
  state.refine = { pending: null, queued: false, generation: state.refine.generation + 1 };
  el("refine-status").textContent = "";
  el("wip-banner").hidden = true;
  const url = new URL(location.href);
  url.searchParams.set("expression", item.expression_id);
  url.searchParams.delete("image");
  history.replaceState(null, "", url);

  el("item-pos").textContent = `item ${index + 1} of ${state.items.length}`;
  el("item-text").textContent = `“${item.text}”`;
  el("item-image").textContent = `${item.image_name} · ${item.width}×${item.height}`;
  renderReview();
  el("prev").disabled = index === 0;
  el("next").disabled = index === state.items.length - 1;

  stage.hidden = false;
  stageEmpty.hidden = true;
  stage.style.aspectRatio = `${item.width} / ${item.height}`;
  stage.style.setProperty("--ar", item.width / item.height);
  overlay.resize(item.height, item.width);
  overlay.clear();
  renderPoints();
  stageImage.alt = item.image_name;
  stageImage.src = `/api/images/${item.image_id}/file/?max_side=${imageSide()}`;

  const jobBox = el("item-job");
  jobBox.replaceChildren();
  if (!item.job) {
    candList.replaceChildren(h("li", { class: "muted" }, "This expression has no job."));
  } else if (item.job.state !== "succeeded") {
    candList.replaceChildren(h("li", { class: "muted" }, "Waiting for the model…"));
    state.jobStatus = new JobStatus(item.job, {
      onChange: (job) => {
        item.job = job;
        if (token === state.loadToken && !ACTIVE.has(job.state)) showItem(state.index);
      },
    });
    jobBox.append(state.jobStatus.el);
    // The item list may be old: ask for the job's state now.
    if (ACTIVE.has(item.job.state)) state.jobStatus.poll();
    restoreWip(item);
    return;
  }
  try {
    const candidates = await candidatesOf(item.job.id);
    if (token !== state.loadToken) return;
    state.candidates = candidates;
    state.masks = candidates.map((c) => decodeRle(c.rle).data);
  } catch (err) {
    if (token !== state.loadToken) return;
    candList.replaceChildren(h("li", { class: "form-error", role: "alert" }, `Could not load the candidates: ${err.message}`));
    return;
  }
  if (item.review && item.review.candidate) {
    state.chosen = state.candidates.findIndex((c) => c.id === item.review.candidate);
  }
  renderCandidates();
  restoreWip(item);
  draw();
  prefetch(index + 1);
}

function prefetch(index) {
  const next = state.items[index];
  if (!next) return;
  const img = new Image();
  img.src = `/api/images/${next.image_id}/file/?max_side=${imageSide()}`;
  if (next.job && next.job.state === "succeeded") candidatesOf(next.job.id).catch(() => {});
}

// Candidates of finished jobs never change: keep the few most recent answers (the next item's is
// fetched ahead while the current one is reviewed).
const candidateCache = new Map();

function candidatesOf(jobId) {
  if (!candidateCache.has(jobId)) {
    const request = api(`/api/jobs/${jobId}/candidates/`);
    request.catch(() => candidateCache.delete(jobId));
    candidateCache.set(jobId, request);
    while (candidateCache.size > 8) candidateCache.delete(candidateCache.keys().next().value);
  }
  return candidateCache.get(jobId);
}

function renderReview() {
  const r = state.item.review;
  const box = el("item-review");
  if (!r) {
    box.textContent = "Not reviewed yet.";
    box.className = "small muted";
  } else {
    const words = { accepted: "Accepted", corrected: "Corrected", rejected: "Rejected" }[r.decision] || r.decision;
    box.textContent = `${words}${r.reviewer ? ` by ${r.reviewer}` : ""}.`;
    box.className = `small badge badge-review-${r.decision}`;
  }
}

// ---------------------------------------------------------------- candidates

function componentTable(c) {
  const entries = Object.entries(c.components || {});
  if (!entries.length) return h("p", { class: "muted small" }, "No component scores.");
  return h(
    "table",
    { class: "components" },
    h("tbody", {}, ...entries.map(([k, v]) => h("tr", {}, h("th", { scope: "row" }, k), h("td", {}, Number(v).toFixed(4))))),
  );
}

function renderCandidates() {
  if (!state.candidates.length) {
    candList.replaceChildren(
      h("li", { class: "muted" }, "No candidates: the pipeline found no proposal. Reject (R), or paint the mask with the brush (B) and save (S)."),
    );
    return;
  }
  candList.replaceChildren(
    ...state.candidates.map((c, i) => {
      const key = i < 9 ? String(i + 1) : i === 9 ? "0" : "";
      const li = h(
        "li",
        { class: `candidate${i === state.chosen ? " is-chosen" : ""}` },
        h(
          "button",
          {
            type: "button",
            class: "candidate-btn",
            "aria-pressed": String(i === state.chosen),
            "aria-keyshortcuts": key || undefined,
            onclick: () => choose(i),
          },
          h("span", { class: "swatch", style: `background:${cssColor(i)}` }),
          key ? h("kbd", {}, key) : null,
          h("span", { class: "cand-score" }, `score ${Number(c.score).toFixed(3)}`),
          h("span", { class: "muted small" }, `${c.area.toLocaleString()} px`),
        ),
      );
      if (state.showScores) li.append(componentTable(c));
      return li;
    }),
  );
}

function choose(i) {
  if (i < 0 || i >= state.candidates.length) return;
  if (state.editor && state.editor.edits > 0 && state.editFrom !== state.candidates[i].id) {
    if (!confirm("Drop your unsaved correction and choose another candidate?")) return;
  }
  if (state.editor && state.editFrom !== state.candidates[i].id) {
    state.editor = null;
    state.points = [];
    clearWip(state.item.expression_id);
    el("wip-banner").hidden = true;
    renderPoints();
  }
  state.chosen = i;
  renderCandidates();
  draw();
}

// ---------------------------------------------------------------- drawing

function draw(box = null) {
  if (!state.item) return;
  if (state.editor) overlay.drawEdit(state.editor.data, state.chosen, box);
  else if (state.masks.length) overlay.drawCandidates(state.masks, state.chosen);
  else overlay.clear();
  el("undo").disabled = !(state.editor && state.editor.canUndo());
  el("redo").disabled = !(state.editor && state.editor.canRedo());
  el("save").disabled = !(state.editor && state.editor.edits > 0);
}

function setHidden(hidden) {
  state.hidden = hidden;
  overlay.canvas.hidden = hidden;
  pointsLayer.hidden = hidden;
  el("toggle-masks").setAttribute("aria-pressed", String(hidden));
  el("toggle-masks").firstChild.textContent = hidden ? "Show masks " : "Hide masks ";
}

function setOpacity(value) {
  const v = Math.max(0, Math.min(100, value));
  el("opacity").value = String(v);
  overlay.canvas.style.opacity = String(v / 100);
}

function renderPoints() {
  const item = state.item;
  pointsLayer.replaceChildren(
    ...state.points.map(([x, y, label]) =>
      h("span", {
        class: `point ${label ? "point-pos" : "point-neg"}`,
        style: `left:${(100 * x) / item.width}%;top:${(100 * y) / item.height}%`,
      }),
    ),
  );
  el("clear-points").disabled = !state.points.length;
}

// ---------------------------------------------------------------- correcting

function ensureEditor() {
  if (state.editor) return state.editor;
  const { width, height } = state.item;
  const start = state.chosen >= 0 ? state.masks[state.chosen] : null;
  state.editor = new MaskEditor(height, width, start);
  state.editFrom = state.chosen >= 0 ? state.candidates[state.chosen].id : null;
  return state.editor;
}

function setTool(tool) {
  state.tool = state.tool === tool ? null : tool;
  document.querySelectorAll("[data-tool]").forEach((b) => b.setAttribute("aria-checked", String(b.dataset.tool === state.tool)));
  stage.dataset.tool = state.tool || "";
  cursor.hidden = !(state.tool === "brush" || state.tool === "eraser");
  if (state.tool === "refine" && state.chosen < 0 && !state.editor) {
    el("refine-status").textContent = "Tip: choose a candidate first (1…9); clicks then refine it.";
  }
}

function setBrush(size) {
  state.brush = Math.max(2, Math.min(120, size));
  el("brush-size").value = String(state.brush);
  el("brush-size-out").textContent = String(state.brush);
  cursor.style.width = cursor.style.height = `${2 * state.brush}px`;
}

function toImage(event) {
  const rect = overlay.canvas.getBoundingClientRect();
  const sx = state.item.width / rect.width;
  const sy = state.item.height / rect.height;
  return { x: (event.clientX - rect.left) * sx, y: (event.clientY - rect.top) * sy, scale: sx };
}

let stroke = null;
let wipTimer = null;

function persistSoon() {
  clearTimeout(wipTimer);
  wipTimer = setTimeout(persist, 300);
}

function persist() {
  const item = state.item;
  if (!item || !state.editor) return;
  saveWip(item.expression_id, {
    candidateId: state.editFrom,
    size: [item.height, item.width],
    counts: state.editor.snapshot(),
    points: state.points,
    pendingRefine: state.refine.pending,
  });
}

function restoreWip(item) {
  const wip = loadWip(item.expression_id);
  if (!wip) return;
  if (!Array.isArray(wip.size) || wip.size[0] !== item.height || wip.size[1] !== item.width) return;
  const editor = new MaskEditor(item.height, item.width);
  try {
    editor.restore(wip.counts);
  } catch {
    clearWip(item.expression_id);
    return;
  }
  editor.edits = 1;
  state.editor = editor;
  state.editFrom = wip.candidateId ?? null;
  const from = state.candidates.findIndex((c) => c.id === state.editFrom);
  if (from >= 0) state.chosen = from;
  state.points = Array.isArray(wip.points) ? wip.points : [];
  const banner = el("wip-banner");
  const when = new Date(wip.savedAt || Date.now()).toLocaleTimeString();
  banner.querySelector("span").textContent = `Unsaved correction restored (from ${when}). Save it with S, or discard it.`;
  banner.hidden = false;
  renderCandidates();
  renderPoints();
  draw();
  if (wip.pendingRefine) pollRefine(wip.pendingRefine, state.refine.generation);
}

function discardWip() {
  clearWip(state.item.expression_id);
  state.editor = null;
  state.editFrom = null;
  state.points = [];
  state.refine.pending = null;
  el("wip-banner").hidden = true;
  el("refine-status").textContent = "";
  renderPoints();
  draw();
}

stage.addEventListener("pointerdown", (event) => {
  if (!state.item || state.hidden) return;
  if (state.tool === "brush" || state.tool === "eraser") {
    if (event.button !== 0) return;
    event.preventDefault();
    stage.setPointerCapture(event.pointerId);
    const editor = ensureEditor();
    editor.begin();
    const p = toImage(event);
    const value = state.tool === "brush" ? 1 : 0;
    const box = editor.paintDisc(p.x, p.y, state.brush * p.scale, value);
    stroke = { x: p.x, y: p.y, value };
    draw(box);
  } else if (state.tool === "refine") {
    if (event.button !== 0 && event.button !== 2) return;
    event.preventDefault();
    const p = toImage(event);
    addRefinePoint(p.x, p.y, event.button === 0 ? 1 : 0);
  }
});

stage.addEventListener("pointermove", (event) => {
  if (!state.item) return;
  const rect = stage.getBoundingClientRect();
  cursor.style.left = `${event.clientX - rect.left}px`;
  cursor.style.top = `${event.clientY - rect.top}px`;
  if (!stroke || !state.editor) return;
  const p = toImage(event);
  const box = state.editor.paintLine(stroke.x, stroke.y, p.x, p.y, state.brush * p.scale, stroke.value);
  stroke.x = p.x;
  stroke.y = p.y;
  draw(box);
});

function endStroke() {
  if (!stroke) return;
  stroke = null;
  draw();
  persistSoon();
}
stage.addEventListener("pointerup", endStroke);
stage.addEventListener("pointercancel", endStroke);
stage.addEventListener("contextmenu", (e) => {
  if (state.tool === "refine") e.preventDefault();
});

// ---------------------------------------------------------------- SAM refine

function addRefinePoint(x, y, label) {
  state.points.push([Math.round(x * 10) / 10, Math.round(y * 10) / 10, label]);
  renderPoints();
  ensureEditor();
  persist();
  sendRefine();
}

async function sendRefine() {
  if (state.refine.pending) {
    state.refine.queued = true; // one request at a time: the newest clicks go when it answers
    return;
  }
  const item = state.item;
  const generation = state.refine.generation;
  const body = {
    image: item.image_id,
    expression: item.expression_id,
    candidate: state.editFrom,
    points_xy: state.points.map(([x, y]) => [x, y]),
    labels: state.points.map(([, , l]) => l),
  };
  // The mask being corrected goes along as SAM's mask prompt, so clicks adjust it rather than start over.
  if (state.editor && state.editor.data.some((v) => v)) body.mask_rle = state.editor.toRle();
  el("refine-status").textContent = "Refining with SAM…";
  try {
    const req = await api("/web/refine/", { method: "POST", json: body });
    if (generation !== state.refine.generation) return;
    state.refine.pending = req.id;
    persist();
    pollRefine(req.id, generation);
  } catch (err) {
    el("refine-status").textContent = `SAM refine failed: ${err.message} Your mask is unchanged and kept.`;
  }
}

async function pollRefine(id, generation, delay = 400) {
  state.refine.pending = id;
  let req;
  try {
    req = await api(`/web/refine/${id}/`);
  } catch (err) {
    if (generation !== state.refine.generation) return;
    el("refine-status").textContent = `Waiting for SAM (${err.message}); trying again…`;
    setTimeout(() => pollRefine(id, generation, Math.min(delay * 2, 5000)), delay);
    return;
  }
  if (generation !== state.refine.generation) return;
  if (req.state === "queued" || req.state === "running") {
    el("refine-status").textContent = req.state === "queued" ? "Refine queued for SAM…" : "SAM is refining…";
    setTimeout(() => pollRefine(id, generation, Math.min(delay * 1.3, 2000)), delay);
    return;
  }
  state.refine.pending = null;
  if (req.state === "succeeded" && req.rle) {
    const mask = decodeRle(req.rle);
    const editor = ensureEditor();
    if (mask.height === editor.height && mask.width === editor.width) {
      editor.replace(mask.data);
      el("refine-status").textContent = `SAM refined the mask (${req.area ?? ""} px). Undo with Ctrl+Z.`;
      draw();
    } else {
      el("refine-status").textContent = "SAM answered with a mask of another size; ignored.";
    }
  } else {
    el("refine-status").textContent = `SAM refine failed: ${req.error || "unknown error"}. Your mask is unchanged and kept.`;
  }
  persist();
  if (state.refine.queued) {
    state.refine.queued = false;
    sendRefine();
  }
}

// ---------------------------------------------------------------- decisions

async function postReview(body, words) {
  if (state.busy) return;
  const item = state.item;
  state.busy = true;
  try {
    const review = await api(`/api/expressions/${item.expression_id}/reviews/`, { method: "POST", json: body });
    item.review = review || { decision: body.decision, candidate: body.candidate };
    clearWip(item.expression_id);
    toast(`${words}: “${item.text}”`, "ok", 2500);
    if (state.index < state.items.length - 1) await showItem(state.index + 1);
    else {
      renderReview();
      state.editor = null;
      draw();
      toast("That was the last item.", "info");
    }
  } catch (err) {
    toast(`Not saved: ${err.message} Your work is kept in this browser.`, "error", 8000);
    persist();
  } finally {
    state.busy = false;
  }
}

function accept() {
  if (!state.item || !state.item.job || state.item.job.state !== "succeeded") return;
  if (state.editor && state.editor.edits > 0) return saveCorrection();
  if (state.chosen < 0) {
    toast("Choose a candidate first: press 1…9.", "info");
    return;
  }
  postReview({ decision: "accepted", candidate: state.candidates[state.chosen].id }, "Accepted");
}

function saveCorrection() {
  if (!state.item) return;
  if (!state.editor || state.editor.edits === 0) return accept();
  const body = { decision: "corrected", rle: state.editor.toRle() };
  if (state.editFrom !== null && state.editFrom !== undefined) body.candidate = state.editFrom;
  postReview(body, "Correction saved");
}

function reject() {
  if (!state.item || !state.item.job) return;
  postReview({ decision: "rejected" }, "Rejected");
}

function undo() {
  if (state.editor && state.editor.undo()) {
    draw();
    persistSoon();
  }
}

function redo() {
  if (state.editor && state.editor.redo()) {
    draw();
    persistSoon();
  }
}

// ---------------------------------------------------------------- wiring

el("accept").addEventListener("click", accept);
el("save").addEventListener("click", saveCorrection);
el("reject").addEventListener("click", reject);
el("prev").addEventListener("click", () => showItem(state.index - 1));
el("next").addEventListener("click", () => showItem(state.index + 1));
el("undo").addEventListener("click", undo);
el("redo").addEventListener("click", redo);
el("wip-discard").addEventListener("click", discardWip);
el("clear-points").addEventListener("click", () => {
  state.points = [];
  renderPoints();
  persist();
});
el("toggle-masks").addEventListener("click", () => setHidden(!state.hidden));
el("toggle-scores").addEventListener("click", toggleScores);
el("opacity").addEventListener("input", (e) => setOpacity(Number(e.target.value)));
el("brush-size").addEventListener("input", (e) => setBrush(Number(e.target.value)));
document.querySelectorAll("[data-tool]").forEach((b) => b.addEventListener("click", () => setTool(b.dataset.tool)));

function toggleScores() {
  state.showScores = !state.showScores;
  el("toggle-scores").setAttribute("aria-pressed", String(state.showScores));
  renderCandidates();
}

document.addEventListener("keydown", (event) => {
  if (isTyping(event) || document.querySelector("dialog[open]")) return;
  if (event.altKey || event.metaKey) return;
  const key = event.key;
  if (event.ctrlKey) {
    if (key.toLowerCase() === "z") {
      event.preventDefault();
      if (event.shiftKey) redo();
      else undo();
    } else if (key.toLowerCase() === "y") {
      event.preventDefault();
      redo();
    }
    return;
  }
  let handled = true;
  if (/^[0-9]$/.test(key)) choose(key === "0" ? 9 : Number(key) - 1);
  else if (key === "a" || key === "A") accept();
  else if (key === "r" || key === "R") reject();
  else if (key === "s" || key === "S") saveCorrection();
  else if (key === "n" || key === "N" || key === "ArrowRight") showItem(state.index + 1);
  else if (key === "p" || key === "P" || key === "ArrowLeft") showItem(state.index - 1);
  else if (key === "h" || key === "H") setHidden(!state.hidden);
  else if (key === "d" || key === "D") toggleScores();
  else if (key === "b" || key === "B") setTool("brush");
  else if (key === "e" || key === "E") setTool("eraser");
  else if (key === "c" || key === "C") setTool("refine");
  else if (key === "[") setBrush(state.brush - (state.brush > 20 ? 4 : 2));
  else if (key === "]") setBrush(state.brush + (state.brush >= 20 ? 4 : 2));
  else if (key === "-") setOpacity(Number(el("opacity").value) - 10);
  else if (key === "+" || key === "=") setOpacity(Number(el("opacity").value) + 10);
  else if (key === "Escape") setTool(null);
  else handled = false;
  if (handled) event.preventDefault();
});

window.addEventListener("beforeunload", () => persist());

setBrush(state.brush);
setOpacity(75);
loadItems()
  .then(() => showItem(startIndex()))
  .catch((err) => {
    el("item-text").textContent = "Could not load the review items";
    stageEmpty.textContent = err.message;
    stageEmpty.hidden = false;
  });
