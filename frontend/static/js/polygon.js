// Polygon editing of a mask: the mask's outlines as polygons (traced along pixel edges, then
// simplified), vertices dragged on an SVG layer over the image, and the polygons filled back into a
// mask (a pixel is inside when its centre is). Holes are not kept: a polygon has none.

/**
 * Outer outlines of a row-major 0/1 mask as polygons of [x, y] pixel-corner vertices, largest first
 * (the same tracing as server/web/services/polygons.py: mask on the left of each walked edge).
 */
export function maskToPolygons(data, height, width) {
  const at = (x, y) => (x >= 0 && y >= 0 && x < width && y < height ? data[y * width + x] : 0);
  const out = new Map(); // "x,y" -> [[x, y], ...] next vertices
  const add = (ax, ay, bx, by) => {
    const key = `${ax},${ay}`;
    if (!out.has(key)) out.set(key, []);
    out.get(key).push([bx, by]);
  };
  for (let y = 0; y <= height; y += 1) {
    for (let x = 0; x <= width; x += 1) {
      const here = at(x, y);
      if (at(x, y - 1) !== here && x < width) {
        if (here) add(x + 1, y, x, y); // mask below: walk towards -x
        else add(x, y, x + 1, y);
      }
      if (at(x - 1, y) !== here && y < height) {
        if (here) add(x, y, x, y + 1); // mask to the right: walk towards +y
        else add(x, y + 1, x, y);
      }
    }
  }
  const loops = [];
  while (out.size) {
    const startKey = out.keys().next().value;
    const start = startKey.split(",").map(Number);
    const loop = [start];
    let prev = null;
    let cur = start;
    for (;;) {
      const key = `${cur[0]},${cur[1]}`;
      const options = out.get(key);
      if (!options || !options.length) break;
      if (options.length > 1 && prev) {
        const ix = cur[0] - prev[0];
        const iy = cur[1] - prev[1];
        const rank = (p) => {
          const cross = ix * (p[1] - cur[1]) - iy * (p[0] - cur[0]);
          return cross < 0 ? 0 : cross === 0 ? 1 : 2;
        };
        options.sort((a, b) => rank(a) - rank(b));
      }
      const next = options.shift();
      if (!options.length) out.delete(key);
      prev = cur;
      cur = next;
      if (cur[0] === start[0] && cur[1] === start[1]) break;
      loop.push(cur);
    }
    if (loop.length >= 4 && signedArea(loop) < 0) loops.push(loop);
  }
  loops.sort((a, b) => Math.abs(signedArea(b)) - Math.abs(signedArea(a)));
  return loops;
}

export function signedArea(points) {
  let s = 0;
  for (let i = 0; i < points.length; i += 1) {
    const [x0, y0] = points[i];
    const [x1, y1] = points[(i + 1) % points.length];
    s += x0 * y1 - x1 * y0;
  }
  return s / 2;
}

/** Douglas-Peucker on a closed polygon: vertices within `epsilon` pixels of the simplified outline go. */
export function simplify(points, epsilon = 1) {
  if (points.length <= 4) return points.slice();
  // split the ring at its first vertex and the vertex farthest from it
  let far = 0;
  let best = -1;
  for (let i = 1; i < points.length; i += 1) {
    const d = (points[i][0] - points[0][0]) ** 2 + (points[i][1] - points[0][1]) ** 2;
    if (d > best) {
      best = d;
      far = i;
    }
  }
  const dp = (pts) => {
    if (pts.length < 3) return pts;
    const [ax, ay] = pts[0];
    const [bx, by] = pts[pts.length - 1];
    const len = Math.hypot(bx - ax, by - ay) || 1;
    let index = 0;
    let dmax = 0;
    for (let i = 1; i < pts.length - 1; i += 1) {
      const d = Math.abs((bx - ax) * (ay - pts[i][1]) - (ax - pts[i][0]) * (by - ay)) / len;
      if (d > dmax) {
        dmax = d;
        index = i;
      }
    }
    if (dmax <= epsilon) return [pts[0], pts[pts.length - 1]];
    const left = dp(pts.slice(0, index + 1));
    return [...left.slice(0, -1), ...dp(pts.slice(index))];
  };
  const a = dp(points.slice(0, far + 1));
  const b = dp([...points.slice(far), points[0]]);
  return [...a.slice(0, -1), ...b.slice(0, -1)];
}

/** Fill polygons into a row-major 0/1 mask of height x width (pixel centres inside). */
export function polygonsToMask(polygons, height, width) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.fillStyle = "#fff";
  for (const poly of polygons) {
    if (poly.length < 3) continue;
    ctx.beginPath();
    ctx.moveTo(poly[0][0], poly[0][1]);
    for (const [x, y] of poly.slice(1)) ctx.lineTo(x, y);
    ctx.closePath();
    ctx.fill();
  }
  const px = ctx.getImageData(0, 0, width, height).data;
  const mask = new Uint8Array(width * height);
  for (let p = 0; p < mask.length; p += 1) mask[p] = px[p * 4 + 3] >= 128 ? 1 : 0;
  return mask;
}

const SVG = "http://www.w3.org/2000/svg";

/**
 * Vertices to drag on an SVG layer (`svg`, laid over the image with viewBox = the image's pixels).
 * Drag a vertex to move it; double-click an edge to add one; Alt+click a vertex to remove it.
 * `onEdit(polygons)` runs after each change with the edited polygons.
 */
export class PolygonLayer {
  constructor(svg, { toImage, onEdit }) {
    this.svg = svg;
    this.toImage = toImage;
    this.onEdit = onEdit;
    this.polygons = [];
    this.drag = null;
    svg.addEventListener("pointermove", (e) => this.onMove(e));
    svg.addEventListener("pointerup", () => this.onUp());
    svg.addEventListener("pointercancel", () => this.onUp());
  }

  show(polygons, height, width) {
    this.polygons = polygons.map((p) => p.map(([x, y]) => [x, y]));
    this.svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    this.svg.removeAttribute("hidden"); // an SVG element has no `hidden` property, only the attribute
    this.render();
  }

  hide() {
    this.svg.setAttribute("hidden", "");
    this.svg.replaceChildren();
    this.polygons = [];
  }

  vertexCount() {
    return this.polygons.reduce((n, p) => n + p.length, 0);
  }

  render() {
    const scale = this.svg.viewBox.baseVal.width / Math.max(1, this.svg.getBoundingClientRect().width);
    const r = 5 * scale;
    this.svg.replaceChildren();
    this.polygons.forEach((poly, pi) => {
      const outline = document.createElementNS(SVG, "polygon");
      outline.setAttribute("points", poly.map(([x, y]) => `${x},${y}`).join(" "));
      outline.setAttribute("class", "poly-outline");
      outline.setAttribute("stroke-width", String(2 * scale));
      outline.addEventListener("dblclick", (e) => this.insertAt(pi, e));
      this.svg.append(outline);
      poly.forEach(([x, y], vi) => {
        const c = document.createElementNS(SVG, "circle");
        c.setAttribute("cx", String(x));
        c.setAttribute("cy", String(y));
        c.setAttribute("r", String(r));
        c.setAttribute("stroke-width", String(1.5 * scale));
        c.setAttribute("class", "poly-vertex");
        c.dataset.poly = String(pi);
        c.dataset.vertex = String(vi);
        c.addEventListener("pointerdown", (e) => this.onDown(e, pi, vi));
        this.svg.append(c);
      });
    });
  }

  onDown(e, pi, vi) {
    if (e.button !== 0) return;
    e.preventDefault();
    e.stopPropagation();
    if (e.altKey && this.polygons[pi].length > 3) {
      this.polygons[pi].splice(vi, 1);
      this.render();
      this.onEdit(this.polygons);
      return;
    }
    this.drag = { pi, vi, moved: false };
    this.svg.setPointerCapture(e.pointerId);
  }

  onMove(e) {
    if (!this.drag) return;
    const p = this.toImage(e);
    this.polygons[this.drag.pi][this.drag.vi] = [Math.round(p.x * 10) / 10, Math.round(p.y * 10) / 10];
    this.drag.moved = true;
    this.render();
  }

  onUp() {
    if (!this.drag) return;
    const moved = this.drag.moved;
    this.drag = null;
    if (moved) this.onEdit(this.polygons);
  }

  insertAt(pi, e) {
    const p = this.toImage(e);
    const poly = this.polygons[pi];
    let best = 0;
    let bestD = Infinity;
    for (let i = 0; i < poly.length; i += 1) {
      const [ax, ay] = poly[i];
      const [bx, by] = poly[(i + 1) % poly.length];
      const t = Math.max(0, Math.min(1, ((p.x - ax) * (bx - ax) + (p.y - ay) * (by - ay)) / ((bx - ax) ** 2 + (by - ay) ** 2 || 1)));
      const d = Math.hypot(ax + t * (bx - ax) - p.x, ay + t * (by - ay) - p.y);
      if (d < bestD) {
        bestD = d;
        best = i;
      }
    }
    poly.splice(best + 1, 0, [p.x, p.y]);
    this.render();
    this.onEdit(this.polygons);
  }
}
