// Draws masks on a canvas laid over the image. The canvas has the image's full resolution and is
// scaled by CSS, so a pixel of the canvas is a pixel of the mask. Global opacity is the canvas's
// CSS opacity, so the slider costs nothing.

export const PALETTE = [
  [78, 121, 167],
  [242, 142, 43],
  [225, 87, 89],
  [118, 183, 178],
  [89, 161, 79],
  [237, 201, 72],
  [176, 122, 161],
  [255, 157, 167],
  [156, 117, 95],
  [186, 176, 172],
];

export function colorOf(index) {
  return PALETTE[index % PALETTE.length];
}

export function cssColor(index) {
  const [r, g, b] = colorOf(index);
  return `rgb(${r}, ${g}, ${b})`;
}

// Fill colours chosen to stand out from the image under the mask (the one farthest from its mean colour).
export const VIVID = [
  [255, 0, 200],
  [0, 220, 255],
  [255, 230, 0],
  [60, 255, 60],
  [255, 110, 0],
  [40, 90, 255],
];

/** The VIVID colour farthest (RGB distance) from `mean` ([r, g, b]). */
export function contrastColour(mean) {
  let best = VIVID[0];
  let bestD = -1;
  for (const c of VIVID) {
    const d = (c[0] - mean[0]) ** 2 + (c[1] - mean[1]) ** 2 + (c[2] - mean[2]) ** 2;
    if (d > bestD) {
      bestD = d;
      best = c;
    }
  }
  return best;
}

export class Overlay {
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d", { willReadFrequently: false });
    this.image = null;
    this.pixels = null; // RGBA of the image at the mask's resolution, for contrast colours
  }

  resize(height, width) {
    if (this.canvas.width !== width || this.canvas.height !== height) {
      this.canvas.width = width;
      this.canvas.height = height;
    }
    this.image = this.ctx.createImageData(width, height);
    this.pixels = null;
  }

  /** Remember the image's pixels (an <img> already loaded) at the canvas's resolution. */
  setImage(img) {
    const { width, height } = this.canvas;
    try {
      const c = document.createElement("canvas");
      c.width = width;
      c.height = height;
      const ctx = c.getContext("2d", { willReadFrequently: true });
      ctx.drawImage(img, 0, 0, width, height);
      this.pixels = ctx.getImageData(0, 0, width, height).data;
    } catch {
      this.pixels = null;
    }
  }

  /** Mean RGB of the image under `mask` ([128, 128, 128] before the image is known). */
  meanUnder(mask) {
    if (!this.pixels) return [128, 128, 128];
    let r = 0;
    let g = 0;
    let b = 0;
    let n = 0;
    const step = mask.length > 4_000_000 ? 7 : 1; // a sample is enough on very large images
    for (let p = 0; p < mask.length; p += step) {
      if (mask[p]) {
        const o = p * 4;
        r += this.pixels[o];
        g += this.pixels[o + 1];
        b += this.pixels[o + 2];
        n += 1;
      }
    }
    return n ? [r / n, g / n, b / n] : [128, 128, 128];
  }

  clear() {
    if (!this.image) return;
    this.image.data.fill(0);
    this.ctx.putImageData(this.image, 0, 0);
  }

  /**
   * One mask alone: a fill in the colour that contrasts most with the image under it, and a two-tone
   * outline (white inside the edge, black outside) `thickness` mask pixels wide, visible on any image.
   * Returns the fill colour [r, g, b].
   */
  drawMask(mask, { thickness = 1, alpha = 110, colour = null } = {}) {
    const px = this.image.data;
    px.fill(0);
    if (!mask) {
      this.ctx.putImageData(this.image, 0, 0);
      return null;
    }
    const fill = colour || contrastColour(this.meanUnder(mask));
    const [r, g, b] = fill;
    for (let p = 0; p < mask.length; p += 1) {
      if (mask[p]) {
        const o = p * 4;
        px[o] = r;
        px[o + 1] = g;
        px[o + 2] = b;
        px[o + 3] = alpha;
      }
    }
    this.ring(mask, thickness);
    this.ctx.putImageData(this.image, 0, 0);
    return fill;
  }

  /** Candidates: only `shown` is drawn (the others are one hover or number key away). */
  drawCandidates(masks, shown, options = {}) {
    return this.drawMask(shown >= 0 ? masks[shown] : null, options);
  }

  /**
   * Two-tone outline bands of width `t`: mask pixels within t (4-neighbour steps) of the outside are
   * white, outside pixels within t of the mask black. The image border is not an edge: a mask that
   * reaches it is not outlined there, so its last row or column is painted exactly as stored.
   */
  ring(mask, t) {
    const { width, height } = this.canvas;
    const px = this.image.data;
    const dist = (inside) => {
      // steps from each pixel of `inside` (1) to the nearest pixel outside it, capped at t + 1
      const d = new Uint8Array(mask.length);
      let frontier = [];
      for (let p = 0; p < mask.length; p += 1) {
        if (!!mask[p] !== inside) continue;
        const x = p % width;
        const out = (q, ok) => ok && !!mask[q] !== inside;
        if (out(p - 1, x > 0) || out(p + 1, x < width - 1) || out(p - width, p >= width) || out(p + width, p + width < mask.length)) {
          d[p] = 1;
          frontier.push(p);
        }
      }
      for (let step = 2; step <= t && frontier.length; step += 1) {
        const next = [];
        for (const p of frontier) {
          const x = p % width;
          for (const [q, ok] of [[p - 1, x > 0], [p + 1, x < width - 1], [p - width, p >= width], [p + width, p + width < height * width]]) {
            if (ok && !d[q] && !!mask[q] === inside) {
              d[q] = step;
              next.push(q);
            }
          }
        }
        frontier = next;
      }
      return d;
    };
    // The outer band stays off the image's first and last rows and columns: there it would only fill
    // the gaps of a ragged edge row (SAM's masks thin out at the padded border) with dark pixels.
    const onBorder = (p) => {
      const x = p % width;
      return x === 0 || x === width - 1 || p < width || p >= (height - 1) * width;
    };
    const inner = dist(true);
    const outer = dist(false);
    for (let p = 0; p < mask.length; p += 1) {
      const o = p * 4;
      if (inner[p]) {
        px[o] = px[o + 1] = px[o + 2] = 255;
        px[o + 3] = 255;
      } else if (outer[p] && !onBorder(p)) {
        px[o] = px[o + 1] = px[o + 2] = 0;
        px[o + 3] = 230;
      }
    }
  }

  /** The mask under correction; box limits the redraw to [x0, y0, x1, y1) when given. */
  drawEdit(mask, colorIndex, box = null) {
    const { width, height } = this.canvas;
    const [x0, y0, x1, y1] = box
      ? [Math.max(0, box[0] - 1), Math.max(0, box[1] - 1), Math.min(width, box[2] + 1), Math.min(height, box[3] + 1)]
      : [0, 0, width, height];
    const px = this.image.data;
    const [r, g, b] = colorIndex >= 0 ? colorOf(colorIndex) : [255, 64, 160];
    for (let y = y0; y < y1; y += 1) {
      for (let x = x0; x < x1; x += 1) {
        const p = y * width + x;
        const o = p * 4;
        if (mask[p]) {
          px[o] = r;
          px[o + 1] = g;
          px[o + 2] = b;
          px[o + 3] = 160;
        } else {
          px[o + 3] = 0;
        }
      }
    }
    this.outline(mask, [x0, y0, x1, y1], [255, 255, 255]);
    this.ctx.putImageData(this.image, 0, 0, x0, y0, x1 - x0, y1 - y0);
  }

  /** Opaque edge pixels: mask pixels with a 4-neighbour outside the mask (the image border is no edge). */
  outline(mask, [x0, y0, x1, y1], [r, g, b]) {
    const { width, height } = this.canvas;
    const px = this.image.data;
    for (let y = y0; y < y1; y += 1) {
      for (let x = x0; x < x1; x += 1) {
        const p = y * width + x;
        if (!mask[p]) continue;
        const edge =
          (x > 0 && !mask[p - 1]) ||
          (x < width - 1 && !mask[p + 1]) ||
          (y > 0 && !mask[p - width]) ||
          (y < height - 1 && !mask[p + width]);
        if (edge) {
          const o = p * 4;
          px[o] = r;
          px[o + 1] = g;
          px[o + 2] = b;
          px[o + 3] = 255;
        }
      }
    }
  }
}
