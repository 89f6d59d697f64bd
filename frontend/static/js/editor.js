// The mask being corrected: a row-major 0/1 Uint8Array at the image's full resolution, with
// brush / eraser painting and undo / redo. History entries are COCO RLE counts strings, so a
// long history of a large mask stays small, and the same string is what localStorage keeps.
import { decodeRle, encodeMask } from "./rle.js";

const HISTORY_LIMIT = 100;

export class MaskEditor {
  /**
   * @param {number} height  mask height in image pixels
   * @param {number} width   mask width in image pixels
   * @param {Uint8Array|null} initial  row-major 0/1 mask to start from (copied), or null for empty
   */
  constructor(height, width, initial = null) {
    this.height = height;
    this.width = width;
    this.data = initial ? Uint8Array.from(initial) : new Uint8Array(height * width);
    this.undoStack = [];
    this.redoStack = [];
    this.edits = 0;
  }

  snapshot() {
    return encodeMask(this.data, this.height, this.width).counts;
  }

  restore(counts) {
    this.data = decodeRle({ size: [this.height, this.width], counts }).data;
  }

  /** Call before a change: remembers the current mask for undo and forgets the redo branch. */
  begin() {
    this.undoStack.push(this.snapshot());
    if (this.undoStack.length > HISTORY_LIMIT) this.undoStack.shift();
    this.redoStack = [];
    this.edits += 1;
  }

  /** Paint (value 1) or erase (value 0) a filled disc; returns the touched box [x0, y0, x1, y1). */
  paintDisc(cx, cy, radius, value) {
    const r = Math.max(0.5, radius);
    const x0 = Math.max(0, Math.floor(cx - r));
    const x1 = Math.min(this.width, Math.ceil(cx + r) + 1);
    const y0 = Math.max(0, Math.floor(cy - r));
    const y1 = Math.min(this.height, Math.ceil(cy + r) + 1);
    const r2 = r * r;
    for (let y = y0; y < y1; y += 1) {
      const dy = y + 0.5 - cy;
      const row = y * this.width;
      for (let x = x0; x < x1; x += 1) {
        const dx = x + 0.5 - cx;
        if (dx * dx + dy * dy <= r2) this.data[row + x] = value;
      }
    }
    return [x0, y0, x1, y1];
  }

  /** Paint a stroke segment as discs spaced at a fraction of the radius; returns the touched box. */
  paintLine(ax, ay, bx, by, radius, value) {
    const dist = Math.hypot(bx - ax, by - ay);
    const steps = Math.max(1, Math.ceil(dist / Math.max(1, radius * 0.4)));
    let box = null;
    for (let i = 0; i <= steps; i += 1) {
      const t = i / steps;
      const b = this.paintDisc(ax + (bx - ax) * t, ay + (by - ay) * t, radius, value);
      box = box ? [Math.min(box[0], b[0]), Math.min(box[1], b[1]), Math.max(box[2], b[2]), Math.max(box[3], b[3])] : b;
    }
    return box;
  }

  /** Replace the whole mask (e.g. with a SAM refine result) as one undoable step. */
  replace(data) {
    if (data.length !== this.data.length) throw new Error("the new mask does not have the image's size");
    this.begin();
    this.data = Uint8Array.from(data);
  }

  canUndo() {
    return this.undoStack.length > 0;
  }

  canRedo() {
    return this.redoStack.length > 0;
  }

  undo() {
    if (!this.undoStack.length) return false;
    this.redoStack.push(this.snapshot());
    this.restore(this.undoStack.pop());
    this.edits += 1;
    return true;
  }

  redo() {
    if (!this.redoStack.length) return false;
    this.undoStack.push(this.snapshot());
    this.restore(this.redoStack.pop());
    this.edits += 1;
    return true;
  }

  toRle() {
    return encodeMask(this.data, this.height, this.width);
  }
}
