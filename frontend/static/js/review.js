// The review loop: one item is one expression on one image. The page loads the item list once,
// then moves between items without reloading: the scaled image, the candidates (COCO RLE decoded
// here), and any work in progress kept in localStorage. Decisions post a Review through the API.
import { api, h, isTyping, toast } from "./api.js";
import { scoreWords, thumbnail } from "./candidates.js";
import { showCategory } from "./category.js";
import { MaskEditor } from "./editor.js";
import { ACTIVE, JobStatus } from "./jobs.js";
import { Overlay, contrastColour } from "./overlay.js";
import { PolygonLayer, maskToPolygons, polygonsToMask, simplify } from "./polygon.js";
import { decodeRle } from "./rle.js";
import { Viewport } from "./viewport.js";
import { clearWip, loadWip, saveWip } from "./wip.js";

const root = document.getElementById("review");
const projectId = root.dataset.project;
const stage = document.getElementById("stage");
const stageImage = document.getElementById("stage-image");
const stageEmpty = document.getElementById("stage-empty");
const overlay = new Overlay(document.getElementById("overlay"));
const viewport = new Viewport(stage, { onChange: (v) => onZoom(v) });
const polyLayer = new PolygonLayer(document.getElementById("poly-layer"), {
  toImage: (e) => toImage(e),
  onEdit: (polygons) => {
    const editor = ensureEditor();
    editor.replace(polygonsToMask(polygons, editor.height, editor.width));
    draw();
    persistSoon();
  },
});
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
  chosen: -1, // the candidate shown (and accepted by A): the top one unless another is chosen
  hover: -1, // a candidate shown while the pointer is on its card
  saved: null, // decoded mask of the saved verdict (accepted candidate or corrected mask), or null
  showSaved: false, // the saved verdict is drawn instead of the candidates
  fills: [], // fill colour of each candidate (contrasting with the image under it)
  box: null, // [x0, y0, x1, y1] image pixels: SAM box prompt
  boxDrag: null,
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

// Review order: items with candidates and no verdict first, then those still waiting for the model,
// then the reviewed ones, then the rest (failed or without a job); within each, image then expression.
function readiness(item) {
  if (item.ready) return 0;
  if (item.job && ACTIVE.has(item.job.state)) return 1;
  if (item.review) return 2;
  return 3;
}

async function loadItems() {
  const mine = new URLSearchParams(location.search).get("mine") === "1";
  const toggle = el("mine-toggle");
  toggle.textContent = mine ? "all images" : "my images only";
  toggle.href = mine ? "?" : "?mine=1";
  const data = await api(`/web/projects/${projectId}/review/items/${mine ? "?mine=1" : ""}`);
  state.items = data.items.map((it, i) => ({ ...it, order: i })).sort((a, b) => readiness(a) - readiness(b) || a.order - b.order);
}

/** Index of the next item after `from` that is ready (succeeded, no verdict), wrapping; -1 if none. */
function nextReady(from) {
  const n = state.items.length;
  for (let k = 1; k < n; k += 1) {
    const it = state.items[(from + k) % n];
    if (it.ready) return (from + k) % n;
  }
  return -1;
}

function startIndex() {
  const wantExpr = Number(root.dataset.startExpression || new URLSearchParams(location.search).get("expression"));
  const wantImage = Number(root.dataset.startImage || new URLSearchParams(location.search).get("image"));
  if (wantExpr) {
    const i = state.items.findIndex((it) => it.expression_id === wantExpr);
    if (i >= 0) return i;
  }
  if (wantImage) {
    const i = state.items.findIndex((it) => it.image_id === wantImage && it.ready);
    if (i >= 0) return i;
    const j = state.items.findIndex((it) => it.image_id === wantImage);
    if (j >= 0) return j;
  }
  const open = state.items.findIndex((it) => it.ready);
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
  state.hover = -1;
  state.saved = null;
  state.showSaved = !!item.review && item.review.decision !== "rejected";
  state.fills = [];
  state.box = null;
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

  const ready = state.items.filter((it) => it.ready).length;
  el("item-pos").textContent = `item ${index + 1} of ${state.items.length} · ${ready} ready`;
  el("item-text").textContent = `“${item.text}”`;
  el("item-image").textContent = `${item.image_name} · ${item.width}×${item.height}`;
  renderReview();
  showCategory(item);
  loadActivity(item);
  el("prev").disabled = index === 0;
  el("next").disabled = index === state.items.length - 1;

  stage.hidden = false;
  stageEmpty.hidden = true;
  stage.style.aspectRatio = `${item.width} / ${item.height}`;
  stage.style.setProperty("--ar", item.width / item.height);
  overlay.resize(item.height, item.width);
  overlay.clear();
  viewport.fit();
  if (state.tool === "polygon") setTool("polygon"); // leave the polygon tool: its vertices were the last item's
  polyLayer.hide();
  renderPoints();
  renderBox();
  stageImage.alt = item.image_name;
  stageImage.src = `/api/images/${item.image_id}/file/?max_side=${imageSide()}`;

  const jobBox = el("item-job");
  jobBox.replaceChildren();
  if (item.review && item.review.rle) {
    try {
      state.saved = decodeRle(item.review.rle).data;
    } catch {
      state.saved = null;
    }
  }
  updateButtons();
  if (!item.job) {
    candList.replaceChildren(h("li", { class: "muted" }, "This expression has no job."));
    draw();
  } else if (item.job.state !== "succeeded") {
    const words = ACTIVE.has(item.job.state) ? "Waiting for the model…" : `No candidates: the job ${item.job.state === "cancelled" ? "was cancelled" : "failed"}. Retry it above, or paint the mask (B).`;
    candList.replaceChildren(h("li", { class: "muted" }, words));
    state.jobStatus = new JobStatus(item.job, {
      onChange: (job) => {
        item.job = job;
        if (token !== state.loadToken) return;
        // Early candidates, then the final ones: in place, keeping the choice and any correction under way.
        if (job.partial || job.state === "succeeded") {
          item.ready = job.state === "succeeded" && !item.review;
          refreshCandidates(item, token);
        } else if (!ACTIVE.has(job.state)) showItem(state.index);
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
  state.chosen = state.candidates.length ? 0 : -1;
  if (item.review && item.review.candidate) {
    const i = state.candidates.findIndex((c) => c.id === item.review.candidate);
    if (i >= 0) {
      state.chosen = i;
      if (item.review.decision === "accepted") state.saved = state.masks[i];
    }
  }
  computeFills();
  renderCandidates();
  restoreWip(item);
  draw();
  prefetch(index + 1);
}

/** Index of the mask in `masks` that overlaps `mask` best (IoU at least 0.5), or -1. */
function bestMatch(mask, masks) {
  let best = -1;
  let bestIou = 0.5;
  masks.forEach((other, i) => {
    let both = 0;
    let either = 0;
    for (let p = 0; p < mask.length; p += 1) {
      if (mask[p] && other[p]) both += 1;
      if (mask[p] || other[p]) either += 1;
    }
    const iou = either ? both / either : 0;
    if (iou >= bestIou) {
      best = i;
      bestIou = iou;
    }
  });
  return best;
}

/**
 * Show the job's candidates so far without leaving the item: the early ones while it runs (with a note
 * that better ones are coming), then the final ones in their place. The chosen candidate stays chosen
 * (the same row, or the new candidate most like it); a correction, points and box are left as they are.
 */
async function refreshCandidates(item, token) {
  let candidates;
  try {
    candidates = await api(`/api/jobs/${item.job.id}/candidates/`);
  } catch (err) {
    if (token === state.loadToken) el("refine-status").textContent = `Could not load the candidates: ${err.message}`;
    return;
  }
  if (token !== state.loadToken) return;
  if (!candidates.length) {
    if (item.job.state === "succeeded") showItem(state.index); // no proposal at all: say so, as on a fresh load
    return;
  }
  if (item.job.state === "succeeded") candidateCache.set(item.job.id, Promise.resolve(candidates));
  const wasId = state.chosen >= 0 ? state.candidates[state.chosen].id : null;
  const wasMask = state.chosen >= 0 ? state.masks[state.chosen] : null;
  state.candidates = candidates;
  state.masks = candidates.map((c) => decodeRle(c.rle).data);
  let chosen = candidates.findIndex((c) => c.id === wasId);
  if (chosen < 0 && wasMask) chosen = bestMatch(wasMask, state.masks);
  state.chosen = chosen >= 0 ? chosen : 0;
  state.hover = -1;
  const review = item.review;
  if (review && review.decision === "accepted" && review.candidate) {
    const i = candidates.findIndex((c) => c.id === review.candidate);
    if (i >= 0) state.saved = state.masks[i];
  }
  computeFills();
  renderCandidates();
  updateButtons();
  draw();
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
    const when = r.created_at ? ` · ${new Date(r.created_at).toLocaleString()}` : "";
    const c = state.item.check;
    const stageWords = !c ? " · not checked yet" : c.verdict === "approved" ? ` · approved by ${c.checker}` : ` · sent back by ${c.checker}${c.note ? `: “${c.note}”` : ""}`;
    box.textContent = `Saved: ${words}${r.reviewer ? ` by ${r.reviewer}` : ""}${when}${stageWords}`;
    box.className = `small badge badge-review-${c && c.verdict === "sent_back" ? "rejected" : r.decision}`;
  }
  // The review stage: a second person approves the decision or sends it back.
  const me = root.dataset.user;
  const checkBox = el("stage-check");
  checkBox.hidden = !(r && r.id && r.reviewer && r.reviewer !== me);
  if (!checkBox.hidden) el("check-who").textContent = r.reviewer;
  renderStageLabel();
}

/** The words over the image: what is drawn (the saved verdict, or which candidate). */
function renderStageLabel() {
  const label = el("stage-label");
  const r = state.item && state.item.review;
  if (state.editor) label.textContent = "Your correction (not saved yet)";
  else if (state.hover >= 0) label.textContent = `Candidate ${state.hover + 1} of ${state.candidates.length}`;
  else if (state.showSaved && r && state.saved) label.textContent = `Saved mask · ${r.decision}${r.reviewer ? ` by ${r.reviewer}` : ""}`;
  else if (state.showSaved && r && r.decision === "rejected") label.textContent = `Rejected${r.reviewer ? ` by ${r.reviewer}` : ""}: no mask kept`;
  else if (state.chosen >= 0) label.textContent = `Candidate ${state.chosen + 1} of ${state.candidates.length}${state.chosen === 0 ? " (top)" : ""}`;
  else label.textContent = "";
  label.hidden = !label.textContent;
}

async function loadActivity(item) {
  const list = el("history");
  list.replaceChildren();
  try {
    const data = await api(`/web/expressions/${item.expression_id}/activity/`);
    if (state.item !== item) return;
    if (!data.activity.length) {
      list.append(h("li", { class: "muted" }, "No decision yet."));
      return;
    }
    list.append(
      ...data.activity
        .slice()
        .reverse()
        .map((a) =>
          h(
            "li",
            { class: `history-${a.verb}` },
            h("strong", {}, a.actor || "someone"),
            ` ${a.verb === "undone" ? a.detail : a.words.toLowerCase()}${a.verb !== "undone" && a.detail ? ` (${a.detail})` : ""}`,
            h("span", { class: "muted" }, ` · ${new Date(a.created_at).toLocaleTimeString()}`),
          ),
        ),
    );
  } catch (err) {
    list.append(h("li", { class: "muted" }, `History not loaded: ${err.message}`));
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

function computeFills() {
  state.fills = state.masks.map((m) => contrastColour(overlay.meanUnder(m)));
}

function renderCandidates() {
  const savedBtn = el("show-saved");
  savedBtn.hidden = !(state.item && state.item.review && (state.saved || state.item.review.decision === "rejected"));
  savedBtn.setAttribute("aria-pressed", String(state.showSaved));
  if (!state.candidates.length) {
    candList.replaceChildren(
      h("li", { class: "muted" }, "No candidates: the pipeline found no proposal. Reject (R), or paint the mask with the brush (B) and save (S)."),
    );
    return;
  }
  const { width, height } = state.item;
  const imageReady = stageImage.complete && stageImage.naturalWidth > 0;
  const early = state.item.job && state.item.job.state === "running" && state.candidates.some((c) => c.partial);
  candList.replaceChildren(
    ...(early ? [h("li", { class: "early-note small", role: "status" }, "Early candidates — better ones coming")] : []),
    ...state.candidates.map((c, i) => {
      const key = i < 9 ? String(i + 1) : i === 9 ? "0" : "";
      const shown = !state.showSaved && i === state.chosen;
      const fill = state.fills[i] || [255, 0, 200];
      const words = scoreWords(c.components);
      const li = h(
        "li",
        { class: `candidate${shown ? " is-chosen" : ""}` },
        h(
          "button",
          {
            type: "button",
            class: "candidate-btn",
            "aria-pressed": String(shown),
            "aria-keyshortcuts": key || undefined,
            onclick: () => choose(i),
            onmouseenter: () => setHover(i),
            onmouseleave: () => setHover(-1),
            onfocus: () => setHover(i),
            onblur: () => setHover(-1),
          },
          imageReady ? thumbnail(stageImage, state.masks[i], c.bbox_xyxy, width, height, fill) : h("span", { class: "thumb thumb-empty" }),
          h(
            "span",
            { class: "cand-text" },
            h(
              "span",
              { class: "cand-head" },
              key ? h("kbd", {}, key) : null,
              h("span", { class: "cand-score" }, `${i === 0 ? "top · " : ""}score ${Number(c.score).toFixed(3)}`),
              h("span", { class: "muted small" }, `${c.area.toLocaleString()} px`),
              c.partial && !early ? h("span", { class: "badge badge-early small", title: "An early candidate you chose before the final ones came" }, "early") : null,
            ),
            h("span", { class: "cand-words small" }, words.length ? words.join(" · ") : "no score parts"),
          ),
        ),
      );
      if (state.showScores) li.append(componentTable(c));
      return li;
    }),
  );
}

function setHover(i) {
  if (state.hover === i) return;
  state.hover = i;
  draw();
}

function showSavedMask() {
  if (state.editor) return;
  state.showSaved = true;
  state.hover = -1;
  renderCandidates();
  draw();
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
  state.showSaved = false;
  renderCandidates();
  draw();
}

// ---------------------------------------------------------------- drawing

/** Outline width in mask pixels that shows as about two screen pixels at the current zoom. */
function outlineThickness() {
  const rect = overlay.canvas.getBoundingClientRect();
  if (!rect.width || !state.item) return 1;
  return Math.max(1, Math.min(12, Math.round((2 * state.item.width) / rect.width)));
}

const SAVED_FILL = [30, 200, 90];

function draw(box = null) {
  if (!state.item) return;
  const thickness = outlineThickness();
  if (state.editor) overlay.drawEdit(state.editor.data, state.chosen, box);
  else if (state.hover >= 0 && state.masks[state.hover]) overlay.drawMask(state.masks[state.hover], { thickness, colour: state.fills[state.hover] });
  else if (state.showSaved && state.item.review) overlay.drawMask(state.saved, { thickness, colour: SAVED_FILL });
  else if (state.chosen >= 0 && state.masks[state.chosen]) overlay.drawMask(state.masks[state.chosen], { thickness, colour: state.fills[state.chosen] });
  else overlay.clear();
  stage.dataset.shown = state.editor ? "edit" : state.hover >= 0 ? `candidate-${state.hover}` : state.showSaved && state.item.review ? "saved" : state.chosen >= 0 ? `candidate-${state.chosen}` : "none";
  renderStageLabel();
  updateButtons();
}

/** Whether the item's candidates may be accepted: the job succeeded, or it runs and shows early ones. */
function candidatesUsable() {
  const job = state.item && state.item.job;
  if (!job) return false;
  return job.state === "succeeded" || (job.state === "running" && state.candidates.length > 0);
}

function updateButtons() {
  const item = state.item;
  const editing = !!(state.editor && state.editor.edits > 0);
  const succeeded = candidatesUsable();
  el("undo").disabled = !(state.editor && state.editor.canUndo());
  el("redo").disabled = !(state.editor && state.editor.canRedo());
  el("save").disabled = !editing;
  el("accept").disabled = !(succeeded && (state.candidates.length > 0 || editing));
  el("accept").title = el("accept").disabled ? (succeeded ? "No candidate to accept: paint a mask or reject." : "Waiting for the model's candidates.") : "";
  el("reject").disabled = !(item && item.job);
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
  el("clear-points").disabled = !state.points.length && !state.box;
}

// ---------------------------------------------------------------- correcting

function ensureEditor() {
  if (state.editor) return state.editor;
  const { width, height } = state.item;
  if (state.showSaved && state.saved) {
    // Correcting the saved verdict: start from the mask that was stored.
    state.editor = new MaskEditor(height, width, state.saved);
    const from = state.item.review && state.item.review.candidate;
    state.editFrom = from && state.candidates.some((c) => c.id === from) ? from : null;
  } else {
    const start = state.chosen >= 0 ? state.masks[state.chosen] : null;
    state.editor = new MaskEditor(height, width, start);
    state.editFrom = state.chosen >= 0 ? state.candidates[state.chosen].id : null;
  }
  state.showSaved = false;
  return state.editor;
}

function setTool(tool) {
  state.tool = state.tool === tool ? null : tool;
  document.querySelectorAll("[data-tool]").forEach((b) => b.setAttribute("aria-checked", String(b.dataset.tool === state.tool)));
  stage.dataset.tool = state.tool || "";
  cursor.hidden = !(state.tool === "brush" || state.tool === "eraser");
  if (state.tool === "refine" && !state.editor) {
    el("refine-status").textContent =
      state.chosen >= 0
        ? `Click on the object: left click adds, right click removes. The clicks adjust candidate ${state.chosen + 1}.`
        : "Click on the object: left click adds, right click removes. SAM draws the mask from your clicks alone.";
  } else if (state.tool === "box" && !state.editor) {
    el("refine-status").textContent = "Drag a box around the object; SAM draws the mask inside it. Clicks (C) can follow.";
  }
  if (state.tool === "polygon") showPolygons();
  else polyLayer.hide();
}

/** The mask being corrected as polygons with vertices to drag (simplified to within a pixel). */
function showPolygons() {
  if (!state.item) return;
  const editor = ensureEditor();
  const polygons = maskToPolygons(editor.data, editor.height, editor.width).map((p) => simplify(p, 1));
  polyLayer.show(polygons, editor.height, editor.width);
  el("refine-status").textContent = `${polyLayer.vertexCount()} vertices: drag one to move it, double-click an edge to add one, Alt+click to remove one.`;
  draw();
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
    box: state.box,
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
  state.box = Array.isArray(wip.box) && wip.box.length === 4 ? wip.box : null;
  state.showSaved = false;
  renderBox();
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
  } else if (state.tool === "box") {
    if (event.button !== 0) return;
    event.preventDefault();
    stage.setPointerCapture(event.pointerId);
    const p = toImage(event);
    state.boxDrag = { x: p.x, y: p.y };
    state.box = null;
    renderBox([p.x, p.y, p.x, p.y]);
  }
});

stage.addEventListener("pointermove", (event) => {
  if (!state.boxDrag) return;
  const p = toImage(event);
  renderBox(boxOf(state.boxDrag, p));
});

stage.addEventListener("pointerup", (event) => {
  if (!state.boxDrag) return;
  const p = toImage(event);
  const box = boxOf(state.boxDrag, p);
  state.boxDrag = null;
  if (box[2] - box[0] < 2 || box[3] - box[1] < 2) {
    renderBox();
    return;
  }
  setBoxPrompt(box);
});

/** xyxy box (image pixels, clipped to the image) spanned by two points. */
function boxOf(a, b) {
  const { width, height } = state.item;
  const clip = (v, hi) => Math.round(Math.max(0, Math.min(hi, v)) * 10) / 10;
  return [clip(Math.min(a.x, b.x), width), clip(Math.min(a.y, b.y), height), clip(Math.max(a.x, b.x), width), clip(Math.max(a.y, b.y), height)];
}

/** Draw `box` (or the box prompt kept in state) over the image. */
function renderBox(box = state.box) {
  const rect = el("box-rect");
  if (!box || !state.item) {
    rect.hidden = true;
    return;
  }
  const { width, height } = state.item;
  rect.hidden = false;
  rect.style.left = `${(100 * box[0]) / width}%`;
  rect.style.top = `${(100 * box[1]) / height}%`;
  rect.style.width = `${(100 * (box[2] - box[0])) / width}%`;
  rect.style.height = `${(100 * (box[3] - box[1])) / height}%`;
}

function setBoxPrompt(box) {
  state.box = box;
  renderBox();
  renderPoints();
  ensureEditor();
  persist();
  sendRefine();
}

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
  if (state.box) body.box_xyxy = state.box;
  // The mask being corrected goes along as SAM's mask prompt, so clicks adjust it rather than start
  // over; a box names a new outline, so it goes without the old mask.
  else if (state.editor && state.editor.data.some((v) => v)) body.mask_rle = state.editor.toRle();
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
  const index = state.index;
  state.busy = true;
  try {
    const before = item.review;
    const review = await api(`/api/expressions/${item.expression_id}/reviews/`, { method: "POST", json: body });
    item.review = review || { decision: body.decision, candidate: body.candidate };
    item.ready = false;
    item.check = null;
    clearWip(item.expression_id);
    // Nothing is final until the next item is done: the toast offers Undo (Ctrl+Z does the same).
    if (state.lastDecision && state.lastDecision.toast) state.lastDecision.toast.remove();
    state.lastDecision = { item, index, review: item.review, before };
    state.lastDecision.toast = toast(`${words}: “${item.text}”`, "ok", 8000, { label: "Undo", run: undoDecision });
    const next = nextReady(index);
    if (next >= 0 && next !== index) await showItem(next);
    else {
      await showItem(index);
      toast("No more items ready for review.", "info");
    }
  } catch (err) {
    toast(`Not saved: ${err.message} Your work is kept in this browser.`, "error", 8000);
    persist();
  } finally {
    state.busy = false;
  }
}

async function checkDecision(verdict) {
  const item = state.item;
  if (!item || !item.review || !item.review.id) return;
  try {
    const check = await api(`/web/reviews/${item.review.id}/check/`, {
      method: "POST",
      json: { verdict, note: el("check-note").value },
    });
    item.check = check;
    item.ready = verdict === "sent_back";
    el("check-note").value = "";
    renderReview();
    loadActivity(item);
    toast(verdict === "approved" ? `Approved: “${item.text}”` : `Sent back: “${item.text}”`, "ok");
  } catch (err) {
    toast(`Not saved: ${err.message}`, "error", 8000);
  }
}

el("check-approve").addEventListener("click", () => checkDecision("approved"));
el("check-send-back").addEventListener("click", () => checkDecision("sent_back"));

/** Take back the last decision made on this page and go back to its item. */
async function undoDecision() {
  // A decision still moving to the next item finishes first (Undo may come right after the key).
  for (let i = 0; state.busy && i < 100; i += 1) await new Promise((r) => setTimeout(r, 50));
  const last = state.lastDecision;
  if (!last || !last.review || !last.review.id || state.busy) return;
  state.busy = true;
  try {
    const answer = await api(`/web/reviews/${last.review.id}/undo/`, { method: "POST" });
    if (last.toast) last.toast.remove();
    last.item.review = answer.review;
    last.item.ready = !answer.review && !!last.item.job && last.item.job.state === "succeeded";
    state.lastDecision = null;
    const i = state.items.indexOf(last.item);
    await showItem(i >= 0 ? i : last.index);
    toast(`Undone: “${last.item.text}” is back to ${answer.review ? answer.review.decision : "not reviewed"}.`, "info");
  } catch (err) {
    toast(`Could not undo: ${err.message}`, "error", 8000);
  } finally {
    state.busy = false;
  }
}

function accept() {
  if (!candidatesUsable()) return;
  if (state.editor && state.editor.edits > 0) return saveCorrection();
  if (state.chosen < 0) {
    toast("There is no candidate to accept: paint the mask (B) and save (S), or reject (R).", "info");
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
  if (state.editor) {
    if (state.editor.undo()) {
      if (state.tool === "polygon") showPolygons();
      draw();
      persistSoon();
    }
  } else if (state.lastDecision) {
    undoDecision();
  }
}

function onZoom(v) {
  el("zoom-level").textContent = `${Math.round(v.zoom * 100)}%`;
  if (state.tool === "polygon") polyLayer.render();
  if (state.item && !state.editor) draw();
}

function redo() {
  if (state.editor && state.editor.redo()) {
    if (state.tool === "polygon") showPolygons();
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
  state.box = null;
  renderPoints();
  renderBox();
  persist();
});
el("show-saved").addEventListener("click", showSavedMask);
el("zoom-in").addEventListener("click", () => viewport.zoomBy(1.5));
el("zoom-out").addEventListener("click", () => viewport.zoomBy(1 / 1.5));
el("zoom-fit").addEventListener("click", () => viewport.fit());
stageImage.addEventListener("load", () => {
  if (!state.item) return;
  overlay.setImage(stageImage);
  if (state.masks.length) {
    computeFills();
    renderCandidates();
  }
  draw();
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
  else if (event.shiftKey && key.startsWith("Arrow")) {
    const step = 60;
    viewport.panBy(key === "ArrowLeft" ? step : key === "ArrowRight" ? -step : 0, key === "ArrowUp" ? step : key === "ArrowDown" ? -step : 0);
  } else if (key === "n" || key === "N" || key === "ArrowRight") showItem(state.index + 1);
  else if (key === "p" || key === "P" || key === "ArrowLeft") showItem(state.index - 1);
  else if (key === "h" || key === "H") setHidden(!state.hidden);
  else if (key === "d" || key === "D") toggleScores();
  else if (key === "b" || key === "B") setTool("brush");
  else if (key === "e" || key === "E") setTool("eraser");
  else if (key === "c" || key === "C") setTool("refine");
  else if (key === "x" || key === "X") setTool("box");
  else if (key === "v" || key === "V") setTool("polygon");
  else if (key === "z") viewport.zoomBy(1.5);
  else if (key === "Z") viewport.zoomBy(1 / 1.5);
  else if (key === "f" || key === "F") viewport.fit();
  else if (key === " ") handled = true; // Space held: pan (the viewport handles it)
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
