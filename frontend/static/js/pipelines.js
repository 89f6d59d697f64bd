// Fill every <select data-pipelines> with the pipelines the server offers (GET /api/pipelines/).
import { api } from "./api.js";

let cached = null;

export async function loadPipelines() {
  if (!cached) cached = api("/api/pipelines/");
  return cached;
}

export async function fillPipelineSelects(root = document) {
  const selects = root.querySelectorAll("select[data-pipelines]");
  if (!selects.length) return;
  let pipelines = [];
  try {
    pipelines = await loadPipelines();
  } catch (err) {
    pipelines = [];
  }
  const preferred = localStorage.getItem("ris-pipeline");
  for (const select of selects) {
    select.replaceChildren();
    select.appendChild(new Option("Default", ""));
    for (const p of pipelines) {
      const missing = p.models_present === false;
      const opt = new Option(missing ? `${p.name} (models missing)` : p.name, p.name);
      opt.title = [p.description, p.needs].filter(Boolean).join(" Needs: ");
      select.appendChild(opt);
    }
    if (preferred && pipelines.some((p) => p.name === preferred)) select.value = preferred;
    select.addEventListener("change", () => localStorage.setItem("ris-pipeline", select.value));
  }
}
