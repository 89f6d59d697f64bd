// Candidate cards of the review page: a thumbnail cropped around each mask, and the parts of its
// score in words ("text match 31.2 · spatial rule fired ✓") instead of one bare number.

// Component names the pipelines write (workers/engine/methods/*/pipeline.py) and what they mean.
const WORDS = {
  s_global: "whole-image match",
  s_local: "crop match",
  s_van: "text match",
  s_att: "attribute match",
  s_sur: "surroundings match",
  s_g: "global match",
  s_v: "visual match",
  p: "phrase match",
  n: "other-noun match",
  raw: "raw score",
  hard: "spatial (hard)",
  soft: "spatial fit",
  threshold: "threshold",
};
const FLAGS = {
  rectifier_fired: "spatial rule fired",
  rectifier_pick: "picked by the spatial rule",
  filtered: "filtered out",
  nan: "score was not a number",
};
const SKIP = new Set(["score"]);

/** The score components of a candidate in words, most telling first; [] when there are none. */
export function scoreWords(components) {
  const parts = [];
  for (const [key, value] of Object.entries(components || {})) {
    if (SKIP.has(key)) continue;
    const v = Number(value);
    if (key in FLAGS) {
      if (v) parts.push(`${FLAGS[key]} ✓`);
    } else if (key === "negatives") {
      parts.push(`${v} other noun${v === 1 ? "" : "s"} compared`);
    } else {
      const name = WORDS[key] || key.replaceAll("_", " ");
      parts.push(`${name} ${Math.abs(v) >= 10 ? v.toFixed(1) : v.toFixed(2)}`);
    }
  }
  return parts;
}

/**
 * A `size` x `size` canvas: the image cropped to a square around `bbox` (xyxy mask pixels, padded by a
 * fifth of its side), with `mask` tinted in `colour` and its edge in white.
 * @param {HTMLImageElement} img  the loaded stage image (any rendition of the item's image)
 * @param {Uint8Array} mask  row-major 0/1 mask of width x height
 */
export function thumbnail(img, mask, bbox, width, height, colour, size = 64) {
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = size;
  canvas.className = "thumb";
  const ctx = canvas.getContext("2d");
  const [x0, y0, x1, y1] = bbox && bbox.length === 4 ? bbox : [0, 0, width, height];
  const side = Math.max(x1 - x0, y1 - y0, 8) * 1.4;
  const cx = (x0 + x1) / 2;
  const cy = (y0 + y1) / 2;
  const left = Math.max(0, Math.min(width - side, cx - side / 2));
  const top = Math.max(0, Math.min(height - side, cy - side / 2));
  const sx = (img.naturalWidth || width) / width;
  const sy = (img.naturalHeight || height) / height;
  ctx.fillStyle = "#1b1f24";
  ctx.fillRect(0, 0, size, size);
  try {
    ctx.drawImage(img, left * sx, top * sy, side * sx, side * sy, 0, 0, size, size);
  } catch {
    /* image not decoded yet: the mask alone still tells the shape */
  }
  const tint = ctx.getImageData(0, 0, size, size);
  const px = tint.data;
  const at = (u, v) => {
    const x = Math.floor(left + ((u + 0.5) * side) / size);
    const y = Math.floor(top + ((v + 0.5) * side) / size);
    return x >= 0 && y >= 0 && x < width && y < height && mask[y * width + x] ? 1 : 0;
  };
  const [r, g, b] = colour;
  for (let v = 0; v < size; v += 1) {
    for (let u = 0; u < size; u += 1) {
      if (!at(u, v)) continue;
      const o = (v * size + u) * 4;
      const edge = !at(u - 1, v) || !at(u + 1, v) || !at(u, v - 1) || !at(u, v + 1);
      if (edge) {
        px[o] = px[o + 1] = px[o + 2] = 255;
      } else {
        px[o] = (px[o] + r) / 2;
        px[o + 1] = (px[o + 1] + g) / 2;
        px[o + 2] = (px[o + 2] + b) / 2;
      }
    }
  }
  ctx.putImageData(tint, 0, 0);
  return canvas;
}
