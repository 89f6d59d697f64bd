// Image page: type expressions (many per image, with a pipeline choice) and watch their jobs live.
import { api, h } from "./api.js";
import { JobStatus } from "./jobs.js";
import { fillPipelineSelects } from "./pipelines.js";

const page = document.getElementById("image-page");
const imageId = page.dataset.image;
const projectId = page.dataset.project;
const list = document.getElementById("expression-list");
const empty = document.getElementById("expression-empty");
const form = document.getElementById("expression-form");
const formError = form.querySelector(".form-error");

const REVIEW_LABELS = { accepted: "Accepted", corrected: "Corrected", rejected: "Rejected" };

function expressionRow(expr) {
  const review = expr.review;
  const job = expr.job;
  const row = h(
    "li",
    { class: "expression card", dataset: { expression: expr.id } },
    h("p", { class: "expression-text" }, `“${expr.text}”`),
  );
  const meta = h("div", { class: "row gap wrap" });
  if (job) {
    const status = new JobStatus(job, { onChange: () => refresh() });
    meta.append(status.el);
  }
  if (review) meta.append(h("span", { class: `badge badge-review-${review.decision}` }, REVIEW_LABELS[review.decision] || review.decision));
  if (job && job.state === "succeeded") {
    meta.append(h("a", { class: "btn btn-small", href: `/projects/${projectId}/review/?expression=${expr.id}` }, review ? "Review again" : "Review"));
  } else if (job && job.state === "running" && job.partial) {
    // Early candidates (a coarse grid) are there: they may be reviewed now; the final ones replace them in place.
    meta.append(h("a", { class: "btn btn-small", href: `/projects/${projectId}/review/?expression=${expr.id}` }, "Review early candidates"));
  }
  row.append(meta);
  return row;
}

async function refresh() {
  try {
    const expressions = await api(`/api/images/${imageId}/expressions/`);
    list.replaceChildren(...expressions.slice().reverse().map(expressionRow));
    empty.hidden = expressions.length > 0;
  } catch (err) {
    formError.textContent = `Could not load the expressions: ${err.message}`;
    formError.hidden = false;
  }
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  formError.hidden = true;
  const text = form.elements.text.value.trim();
  if (!text) {
    formError.textContent = "Type an expression first.";
    formError.hidden = false;
    return;
  }
  const payload = { text };
  if (form.elements.pipeline.value) payload.pipeline = form.elements.pipeline.value;
  const configText = form.elements.config.value.trim();
  if (configText) {
    try {
      payload.config = JSON.parse(configText);
    } catch (err) {
      formError.textContent = `The pipeline settings are not valid JSON: ${err.message}`;
      formError.hidden = false;
      return;
    }
  }
  const button = form.querySelector('button[type="submit"]');
  button.disabled = true;
  try {
    await api(`/api/images/${imageId}/expressions/`, { method: "POST", json: payload });
    form.elements.text.value = "";
    await refresh();
    form.elements.text.focus();
  } catch (err) {
    formError.textContent = err.message;
    formError.hidden = false;
  } finally {
    button.disabled = false;
  }
});
form.elements.text.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
    e.preventDefault();
    form.requestSubmit();
  }
});

fillPipelineSelects();
refresh();
