// Work in progress per expression, kept in localStorage until the review is saved: the corrected
// mask (RLE counts), the candidate it started from, the refine clicks and a pending refine
// request. A slow or failed model call or a reload therefore loses nothing.

const PREFIX = "ris-wip:";

export function loadWip(expressionId) {
  try {
    const raw = localStorage.getItem(PREFIX + expressionId);
    if (!raw) return null;
    const wip = JSON.parse(raw);
    return wip && wip.v === 1 ? wip : null;
  } catch {
    return null;
  }
}

export function saveWip(expressionId, wip) {
  try {
    localStorage.setItem(PREFIX + expressionId, JSON.stringify({ ...wip, v: 1, savedAt: Date.now() }));
    return true;
  } catch {
    return false; // storage full or disabled: the page keeps working, only the backup is missing
  }
}

export function clearWip(expressionId) {
  try {
    localStorage.removeItem(PREFIX + expressionId);
  } catch {
    /* nothing to clear */
  }
}
