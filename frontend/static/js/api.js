// Small helpers shared by every page: JSON calls with the CSRF token, readable errors, toasts.

/** The CSRF token Django put in the page's <meta>. */
export function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

/** An error from the API, carrying the server's message in words and its HTTP status. */
export class ApiError extends Error {
  constructor(message, status, details) {
    super(message);
    this.status = status;
    this.details = details || {};
  }
}

/** Turn an API error body ({"error": words, "details": {...}}) into one sentence. */
export function errorText(body, status) {
  if (body && typeof body === "object") {
    if (typeof body.error === "string") {
      const details = body.details && typeof body.details === "object" ? body.details : null;
      if (details && Object.keys(details).length) {
        const parts = Object.entries(details).map(([k, v]) => `${k}: ${Array.isArray(v) ? v.join(" ") : v}`);
        return `${body.error} (${parts.join("; ")})`;
      }
      return body.error;
    }
    if (typeof body.detail === "string") return body.detail;
  }
  if (status === 0) return "The server could not be reached. Check your connection and try again.";
  return `The server answered ${status}.`;
}

/** fetch() a JSON endpoint; throws ApiError with the server's words on a 4xx/5xx. */
export async function api(url, { method = "GET", json, body, signal } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRFToken"] = csrfToken();
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  let response;
  try {
    response = await fetch(url, { method, headers, body, signal, credentials: "same-origin" });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(errorText(null, 0), 0);
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    if (response.status === 401 || response.status === 403) {
      if (!data || !data.error) {
        throw new ApiError("Your session has ended: sign in again.", response.status);
      }
    }
    throw new ApiError(errorText(data, response.status), response.status, data && data.details);
  }
  return data;
}

/**
 * Show a short message in the corner; kind is "info", "ok" or "error". With `action` ({label, run}) the
 * toast carries a button (e.g. Undo) that runs it and closes the toast. Returns the toast element.
 */
export function toast(message, kind = "info", ms = 4000, action = null) {
  const box = document.getElementById("toasts");
  if (!box) return null;
  const el = document.createElement("div");
  el.className = `toast toast-${kind}`;
  const text = document.createElement("span");
  text.textContent = message;
  el.appendChild(text);
  if (action) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "toast-action";
    button.textContent = action.label;
    button.addEventListener("click", () => {
      el.remove();
      action.run();
    });
    el.appendChild(button);
  }
  box.appendChild(el);
  setTimeout(() => el.remove(), ms);
  return el;
}

/** Create an element with attributes and children in one call. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** True when a key press is meant for a text field, not for a page shortcut. */
export function isTyping(event) {
  const t = event.target;
  if (!t || !(t instanceof Element)) return false;
  if (t.isContentEditable) return true;
  const tag = t.tagName;
  if (tag === "TEXTAREA" || tag === "SELECT") return true;
  if (tag === "INPUT") {
    const type = (t.getAttribute("type") || "text").toLowerCase();
    return !["button", "checkbox", "radio", "range", "submit", "reset", "file"].includes(type);
  }
  return false;
}

/** Human status names for an image's review status. */
export const STATUS_LABELS = {
  no_expression: "No expression",
  queued: "Queued",
  needs_review: "Needs review",
  done: "Done",
};
