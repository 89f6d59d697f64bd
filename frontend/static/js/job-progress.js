// Words for where a job stands: its lane and place in it while queued; its stage (waiting for image
// preparation / loading / proposals k of n points / features / scoring / writing), elapsed time and an
// estimate while running. Reads the job JSON of GET /api/jobs/{id}/ (stage, lane, elapsed_s, estimate_s).

const STAGE_WORDS = {
  waiting: "waiting for image preparation",
  loading: "loading the image",
  proposals: "finding masks",
  features: "computing features",
  scoring: "scoring masks",
  writing: "writing candidates",
};

/** "42 s", "3 min 5 s". */
export function seconds(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "";
  const s = Math.max(0, Math.round(value));
  if (s < 60) return `${s} s`;
  return `${Math.floor(s / 60)} min ${s % 60} s`;
}

/** The stage in words: "finding masks, 384 of 1024 points". */
export function stageWords(stage) {
  if (!stage || !stage.name) return "starting";
  let words = STAGE_WORDS[stage.name] || stage.name;
  if (stage.total) words += `, ${stage.done ?? 0} of ${stage.total} ${stage.unit || ""}`.trimEnd();
  return words;
}

/** One line for a queued or running job; "" for others. */
export function progressLine(job) {
  if (!job) return "";
  const lane = job.lane === "background" ? "background lane" : "interactive lane";
  if (job.state === "queued") {
    // The badge says the place (jobs ahead in this lane that you may see); this says which lane and how long.
    return `In the ${lane} · waited ${seconds(job.elapsed_s) || "0 s"}`;
  }
  if (job.state === "running") {
    const words = stageWords(job.stage);
    const parts = [words.charAt(0).toUpperCase() + words.slice(1), `${seconds(job.elapsed_s) || "0 s"} so far`];
    if (job.estimate_s !== null && job.estimate_s !== undefined) parts.push(`about ${seconds(job.estimate_s)} left`);
    return parts.join(" · ");
  }
  return "";
}
