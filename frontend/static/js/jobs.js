// Live job status without reloading: polls GET /api/jobs/{id}/ while the job is queued or
// running and renders state, queue position, progress and the error in words, with retry and
// cancel buttons. onChange hears a new state and the arrival of early candidates (job.partial).
import { api, h } from "./api.js";
import { progressLine } from "./job-progress.js";

export const ACTIVE = new Set(["queued", "running"]);

/** One line saying where the job stands, in words. */
export function jobSummary(job) {
  if (!job) return "No job";
  switch (job.state) {
    case "queued":
      // queue_position counts the jobs ahead of this one in its lane that you may see (0: it is next).
      if (job.queue_position === 0) return "Queued: next in line";
      if (job.queue_position) return `Queued: ${job.queue_position} job${job.queue_position === 1 ? "" : "s"} ahead`;
      return "Queued";
    case "running":
      return `Running: ${Math.round((job.progress || 0) * 100)}%`;
    case "succeeded":
      return "Candidates ready";
    case "failed":
      return "Failed";
    case "cancelled":
      return "Cancelled";
    default:
      return job.state;
  }
}

/**
 * A self-updating status block for one job.
 * onChange(job) is called whenever the job's state changes (e.g. to reload candidates).
 */
export class JobStatus {
  constructor(job, { onChange } = {}) {
    this.job = job;
    this.onChange = onChange || (() => {});
    this.el = h("div", { class: "job-status", "aria-live": "polite" });
    this.timer = null;
    this.delay = 800;
    this.render();
    if (ACTIVE.has(job.state)) this.schedule();
  }

  schedule() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.poll(), this.delay);
  }

  stop() {
    clearTimeout(this.timer);
    this.timer = null;
  }

  async poll() {
    try {
      const job = await api(`/api/jobs/${this.job.id}/`);
      // A new state, or early candidates that just came (job.partial), is news for the page.
      const changed = job.state !== this.job.state || !!job.partial !== !!this.job.partial;
      this.job = job;
      this.render();
      if (changed) this.onChange(job);
      this.delay = ACTIVE.has(job.state) ? Math.min(this.delay * 1.2, 3000) : this.delay;
    } catch (err) {
      this.delay = Math.min(this.delay * 2, 10000);
      this.renderNote(`Could not read the job's status (${err.message}); trying again.`);
    }
    if (ACTIVE.has(this.job.state) && this.el.isConnected) this.schedule();
  }

  renderNote(text) {
    let note = this.el.querySelector(".job-note");
    if (!note) {
      note = h("p", { class: "job-note muted small" });
      this.el.append(note);
    }
    note.textContent = text;
  }

  async act(action) {
    try {
      const job = await api(`/api/jobs/${this.job.id}/${action}/`, { method: "POST" });
      // retry may answer with the same job re-queued or with a new job.
      if (job && job.id) this.job = job;
      else this.job = await api(`/api/jobs/${this.job.id}/`);
      this.delay = 800;
      this.render();
      this.onChange(this.job);
      if (ACTIVE.has(this.job.state)) this.schedule();
    } catch (err) {
      this.renderNote(err.message);
    }
  }

  render() {
    const job = this.job;
    const children = [
      h("span", { class: `badge badge-job-${job.state}` }, jobSummary(job)),
      h("span", { class: "muted small" }, job.pipeline || ""),
    ];
    if (job.state === "running" || job.state === "queued") {
      children.push(
        h("progress", {
          max: "100",
          value: String(Math.round((job.progress || 0) * 100)),
          "aria-label": "Job progress",
        }),
      );
      children.push(h("span", { class: "job-stage" }, progressLine(job)));
      children.push(h("button", { class: "btn btn-small btn-ghost", type: "button", onclick: () => this.act("cancel") }, "Cancel"));
    }
    if (job.state === "failed" || job.state === "cancelled") {
      if (job.error) children.push(h("p", { class: "job-error", role: "alert" }, job.error));
      children.push(h("button", { class: "btn btn-small", type: "button", onclick: () => this.act("retry") }, "Retry"));
    }
    this.el.replaceChildren(...children);
  }
}
