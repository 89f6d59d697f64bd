"""Binary masks as polygons (for COCO polygon, YOLO and Label Studio exports), with NumPy only.

The web image has no OpenCV or scikit-image, so the outline is traced here: every unit edge between a
mask pixel and a background pixel (the "cracks" of the pixel grid) is oriented with the mask on its
left, the edges are linked into closed loops, and runs of collinear edges are merged. Vertices are pixel
corners, ``(x, y)`` with x right and y down, in pixels of the mask (``x`` in ``[0, W]``, ``y`` in ``[0, H]``).

- Loops around the mask (counter-clockwise on screen, positive area in this frame) are the polygons;
  loops around holes are dropped, as COCO, YOLO and Label Studio polygons have no holes. A mask with a
  hole therefore comes back with the hole filled.
- Where two mask pixels touch only at a corner, the tracer keeps them in separate loops (4-connectivity).
- Read back with pycocotools (``frPyObjects`` then ``decode``) the polygons give the mask back pixel
  for pixel, holes aside; the tests (``tests/web/test_export_formats.py``) allow differences only on the
  mask's one-pixel outline, and measure none.
"""

from __future__ import annotations

import numpy as np

Polygon = list[tuple[int, int]]


def _edges(mask: np.ndarray) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Unit boundary edges ``((x0, y0), (x1, y1))`` with the mask on the left when walking them
    (in the y-down frame: "left" of a step right ``(+1, 0)`` is up ``(0, -1)``)."""
    m = np.pad(mask.astype(bool), 1)
    edges = []
    # Horizontal edges at y = row boundary between pixel rows r-1 and r (padded indices).
    top = m[1:, :] & ~m[:-1, :]  # mask below the edge, background above: walk towards -x
    bottom = ~m[1:, :] & m[:-1, :]  # mask above, background below: walk towards +x
    for y, x in zip(*np.nonzero(top), strict=True):
        # padded row y+1 is the pixel row y (unpadded); edge at y, pixel column x-1 spans [x-1, x]
        edges.append(((x, y), (x - 1, y)))
    for y, x in zip(*np.nonzero(bottom), strict=True):
        edges.append(((x - 1, y), (x, y)))
    left = m[:, 1:] & ~m[:, :-1]  # mask right of the edge: walk towards +y
    right = ~m[:, 1:] & m[:, :-1]  # mask left of the edge: walk towards -y
    for y, x in zip(*np.nonzero(left), strict=True):
        edges.append(((x, y - 1), (x, y)))
    for y, x in zip(*np.nonzero(right), strict=True):
        edges.append(((x, y), (x, y - 1)))
    return [((int(a[0]), int(a[1])), (int(b[0]), int(b[1]))) for a, b in edges]


def _signed_area(points: Polygon) -> float:
    xs = np.asarray([p[0] for p in points], dtype=np.float64)
    ys = np.asarray([p[1] for p in points], dtype=np.float64)
    return 0.5 * float(np.dot(xs, np.roll(ys, -1)) - np.dot(np.roll(xs, -1), ys))


def _turn_rank(incoming: tuple[int, int], outgoing: tuple[int, int]) -> int:
    """Prefer the left turn, then straight, then right at a vertex with two ways out (keeps pixels that
    touch only at a corner in separate loops)."""
    cross = incoming[0] * outgoing[1] - incoming[1] * outgoing[0]
    # y-down frame: a left turn on screen has cross < 0
    return 0 if cross < 0 else (1 if cross == 0 else 2)


def mask_to_polygons(mask: np.ndarray) -> list[Polygon]:
    """Outer outlines of ``mask`` (``H x W``, truthy = inside) as polygons of pixel-corner vertices,
    largest first; ``[]`` for an empty mask. See the module docstring for holes and connectivity."""
    outgoing: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for a, b in _edges(mask):
        outgoing.setdefault(a, []).append(b)
    loops: list[Polygon] = []
    while outgoing:
        start = next(iter(outgoing))
        loop = [start]
        prev = None
        current = start
        while True:
            options = outgoing.get(current)
            if not options:
                break
            if len(options) > 1 and prev is not None:
                incoming = (current[0] - prev[0], current[1] - prev[1])
                options.sort(key=lambda p: _turn_rank(incoming, (p[0] - current[0], p[1] - current[1])))
            nxt = options.pop(0)
            if not options:
                del outgoing[current]
            prev, current = current, nxt
            if current == start:
                break
            loop.append(current)
        loops.append(_corners(loop))
    outer = [loop for loop in loops if len(loop) >= 3 and _signed_area(loop) < 0]
    # y-down frame: the mask-on-the-left walk gives a negative shoelace area for outer loops
    outer.sort(key=lambda loop: -abs(_signed_area(loop)))
    return outer


def _corners(loop: Polygon) -> Polygon:
    """Drop vertices in the middle of straight runs."""
    n = len(loop)
    kept = []
    for i in range(n):
        a, b, c = loop[i - 1], loop[i], loop[(i + 1) % n]
        if (b[0] - a[0]) * (c[1] - b[1]) - (b[1] - a[1]) * (c[0] - b[0]) != 0:
            kept.append(b)
    return kept


def flat(polygon: Polygon) -> list[float]:
    """``[x0, y0, x1, y1, ...]`` as COCO writes a polygon."""
    return [float(v) for point in polygon for v in point]
