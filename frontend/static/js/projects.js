// Project list: create a project through the API, then open it.
import { api } from "./api.js";

const form = document.getElementById("new-project");
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const error = form.querySelector(".form-error");
  error.hidden = true;
  const button = form.querySelector("button");
  button.disabled = true;
  try {
    const project = await api("/api/projects/", { method: "POST", json: { name: form.elements.name.value.trim() } });
    window.location.assign(`/projects/${project.id}/`);
  } catch (err) {
    error.textContent = err.message;
    error.hidden = false;
  } finally {
    button.disabled = false;
  }
});
