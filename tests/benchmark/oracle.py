"""A deterministic stand-in engine for metric-path tests: finds the colour named in the sentence.

It implements the part of ``workers.engine.runtime.Engine`` the benchmark uses (``predict`` and a ``meter``),
so the runner's scoring, grouping and bookkeeping can be checked against answers known in advance. The
end-to-end test uses the real engine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from workers.engine.meter import Meter
from workers.engine.synthetic_refer import COLOURS
from workers.engine.types import Candidate, ImageInput


def colour_mask(rgb: np.ndarray, colour: str, tolerance: int = 60) -> np.ndarray:
    """``H x W`` bool: pixels within ``tolerance`` of the named colour in every channel (JPEG noise)."""
    target = np.array(COLOURS[colour], dtype=np.int32)
    return (np.abs(rgb.astype(np.int32) - target) <= tolerance).all(axis=2)


class ColourOracleEngine:
    """Answers each expression with the pixels of the colour it names; no colour named -> no proposal."""

    def __init__(self) -> None:
        self.meter = Meter()
        self.calls: list[tuple[str, int, str]] = []  # (image sha256, number of expressions, pipeline)

    def pipelines(self) -> list[str]:
        return ["oracle", "oracle_b"]

    def resolve_config(self, pipeline: str, overrides: Mapping | None = None) -> dict:
        return {"tolerance": 60, **dict(overrides or {})}

    def predict(
        self,
        image: ImageInput,
        expressions: Sequence[str],
        *,
        pipeline: str,
        config: Mapping | None = None,
        top_k: int | None = None,
    ) -> list[list[Candidate]]:
        self.calls.append((image.sha256, len(expressions), pipeline))
        with self.meter.model_call("oracle_image_model"):
            pass
        answers = []
        for text in expressions:
            self.meter.count("oracle_text_model")
            colour = next((c for c in COLOURS if c in text.split()), None)
            if colour is None:
                answers.append([])
                continue
            mask = colour_mask(image.rgb, colour, int((config or {}).get("tolerance", 60)))
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            rle = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
            x0, y0, w, h = (
                float(v)
                for v in mask_utils.toBbox(mask_utils.encode(np.asfortranarray(mask.astype(np.uint8))))
            )
            answers.append(
                [Candidate(0, rle, (x0, y0, x0 + w, y0 + h), int(mask.sum()), 1.0, {"oracle": 1.0})]
            )
        return answers
