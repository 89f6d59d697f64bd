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

export class Overlay {
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d", { willReadFrequently: false });
    this.image = null;
  }

  resize(height, width) {
    if (this.canvas.width !== width || this.canvas.height !== height) {
      this.canvas.width = width;
      this.canvas.height = height;
    }
    this.image = this.ctx.createImageData(width, height);
  }

  clear() {
    if (!this.image) return;
    this.image.data.fill(0);
    this.ctx.putImageData(this.image, 0, 0);
  }

  /**
   * All candidates at once. masks: row-major Uint8Arrays; chosen: index or -1.
   * Unchosen masks are drawn faint when one is chosen; the chosen one gets an outline.
   */
  drawCandidates(masks, chosen) {
    const { width, height } = this.canvas;
    const px = this.image.data;
    px.fill(0);
    const order = masks.map((_, i) => i).reverse();
    if (chosen >= 0) order.push(chosen);
    for (const i of order) {
      const mask = masks[i];
      const [r, g, b] = colorOf(i);
      const alpha = chosen < 0 ? 120 : i === chosen ? 150 : 40;
      for (let p = 0; p < mask.length; p += 1) {
        if (mask[p]) {
          const o = p * 4;
          px[o] = r;
          px[o + 1] = g;
          px[o + 2] = b;
          px[o + 3] = alpha;
        }
      }
    }
    if (chosen >= 0) this.outline(masks[chosen], [0, 0, width, height], [255, 255, 255]);
    this.ctx.putImageData(this.image, 0, 0);
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

  /** Opaque edge pixels: mask pixels with a 4-neighbour outside the mask. */
  outline(mask, [x0, y0, x1, y1], [r, g, b]) {
    const { width, height } = this.canvas;
    const px = this.image.data;
    for (let y = y0; y < y1; y += 1) {
      for (let x = x0; x < x1; x += 1) {
        const p = y * width + x;
        if (!mask[p]) continue;
        const edge =
          x === 0 || y === 0 || x === width - 1 || y === height - 1 ||
          !mask[p - 1] || !mask[p + 1] || !mask[p - width] || !mask[p + width];
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
