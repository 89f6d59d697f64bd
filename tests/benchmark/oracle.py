"""A deterministic stand-in engine for metric-path tests: finds the colour named in the sentence.

It implements the benchmark's ``EngineLike`` protocol (``pipelines``, ``resolve_config``, ``predict`` returning a
``Prediction``, a ``meter``) with the colour oracle of ``tests/plugins/colour_oracle``, and records every call, so
the runner's scoring, grouping and bookkeeping can be checked against answers known in advance. The command's
tests run the real engine with that plugin pipeline; the end-to-end test runs the real pipelines.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from tests.plugins.colour_oracle.config import OracleConfig
from tests.plugins.colour_oracle.pipeline import colour_mask
from workers.engine.core.meter import Meter
from workers.engine.core.types import Candidate, ImageInput
from workers.engine.data.synthetic import COLOURS
from workers.engine.runtime import Prediction

__all__ = ["ColourOracleEngine", "colour_mask"]


class ColourOracleEngine:
    """Answers each expression with the pixels of the colour it names; no colour named -> no proposal."""

    def __init__(self) -> None:
        self.meter = Meter()
        self.calls: list[tuple[str, int, str]] = []  # (image sha256, number of expressions, pipeline)
        self.isolated: list[bool] = []  # per call: whether it asked for a throwaway cache (per-ref schedule)

    def pipelines(self) -> list[str]:
        return ["oracle", "oracle_b"]

    def resolve_config(self, pipeline: str, overrides: Mapping | None = None) -> dict:
        return OracleConfig.from_dict(overrides).to_dict()

    def predict(
        self,
        image: ImageInput,
        expressions: Sequence[str],
        *,
        pipeline: str,
        config: Mapping | None = None,
        top_k: int | None = None,
        isolated: bool = False,
        on_progress: Callable[[str, int, int], None] | None = None,
        on_partial: Callable[[Prediction], None] | None = None,
    ) -> Prediction:
        # No coarse grid here: as ``Engine.predict`` on a prepared image, ``on_partial`` is never called.
        self.calls.append((image.sha256, len(expressions), pipeline))
        self.isolated.append(isolated)
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
        return Prediction(answers, pipeline, self.resolve_config(pipeline, config), "oracle")
