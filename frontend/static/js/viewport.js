// Zoom and pan of the review stage: a CSS transform on the stage (image, mask canvas and click marks
// move together, so pointer maths through getBoundingClientRect stays right). Wheel zooms at the
// pointer, dragging with Space held (or the middle button) pans, Z / Shift+Z zoom, F fits.

const MIN = 1;
const MAX = 16;

export class Viewport {
  /** @param {HTMLElement} stage  the element transformed; its parent clips it */
  constructor(stage, { onChange = () => {} } = {}) {
    this.stage = stage;
    this.onChange = onChange;
    this.zoom = 1;
    this.x = 0; // translation in screen pixels
    this.y = 0;
    this.spaceDown = false;
    this.drag = null;
    stage.style.transformOrigin = "0 0";
    const wrap = stage.parentElement;
    wrap.addEventListener("wheel", (e) => this.onWheel(e), { passive: false });
    document.addEventListener("keydown", (e) => {
      if (e.key === " " && !isField(e.target)) {
        this.spaceDown = true;
        stage.dataset.pan = "ready";
        e.preventDefault();
      }
    });
    document.addEventListener("keyup", (e) => {
      if (e.key === " ") {
        this.spaceDown = false;
        delete stage.dataset.pan;
      }
    });
    // Capture phase: a pan drag wins over the brush and SAM tools.
    stage.addEventListener("pointerdown", (e) => this.onDown(e), true);
    stage.addEventListener("pointermove", (e) => this.onMove(e), true);
    stage.addEventListener("pointerup", (e) => this.onUp(e), true);
    stage.addEventListener("pointercancel", (e) => this.onUp(e), true);
  }

  apply() {
    this.stage.style.transform = this.zoom === 1 && !this.x && !this.y ? "" : `translate(${this.x}px, ${this.y}px) scale(${this.zoom})`;
    this.stage.dataset.zoom = this.zoom.toFixed(2);
    this.onChange(this);
  }

  /** Zoom by `factor` keeping the screen point (cx, cy) (client pixels) fixed; centre when omitted. */
  zoomBy(factor, cx = null, cy = null) {
    const wrap = this.stage.parentElement.getBoundingClientRect();
    const px = cx ?? wrap.left + wrap.width / 2;
    const py = cy ?? wrap.top + wrap.height / 2;
    const next = Math.max(MIN, Math.min(MAX, this.zoom * factor));
    const rect = this.stage.getBoundingClientRect();
    // the stage's untransformed origin on screen
    const ox = rect.left - this.x;
    const oy = rect.top - this.y;
    const k = next / this.zoom;
    this.x = px - ox - (px - ox - this.x) * k;
    this.y = py - oy - (py - oy - this.y) * k;
    this.zoom = next;
    if (next === MIN) this.x = this.y = 0;
    this.apply();
  }

  panBy(dx, dy) {
    if (this.zoom === 1) return;
    this.x += dx;
    this.y += dy;
    this.apply();
  }

  fit() {
    this.zoom = 1;
    this.x = this.y = 0;
    this.apply();
  }

  onWheel(e) {
    if (!this.stage.offsetParent) return;
    e.preventDefault();
    this.zoomBy(Math.exp(-e.deltaY * 0.0015), e.clientX, e.clientY);
  }

  onDown(e) {
    if (!(this.spaceDown || e.button === 1)) return;
    e.preventDefault();
    e.stopImmediatePropagation();
    this.drag = { x: e.clientX, y: e.clientY, id: e.pointerId };
    this.stage.setPointerCapture(e.pointerId);
    this.stage.dataset.pan = "dragging";
  }

  onMove(e) {
    if (!this.drag) return;
    e.stopImmediatePropagation();
    this.panBy(e.clientX - this.drag.x, e.clientY - this.drag.y);
    this.drag.x = e.clientX;
    this.drag.y = e.clientY;
  }

  onUp(e) {
    if (!this.drag) return;
    e.stopImmediatePropagation();
    this.drag = null;
    this.stage.dataset.pan = this.spaceDown ? "ready" : "";
  }
}

function isField(target) {
  return target && (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName));
}
