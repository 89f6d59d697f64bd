"""The colour oracle pipeline: each expression's candidate is the pixels of the colour it names."""

from __future__ import annotations

import numpy as np

from tests.plugins.colour_oracle.config import OracleConfig
from workers.engine.blocks.masks import Proposals
from workers.engine.blocks.ranking import rank_candidates
from workers.engine.core.cache import ImageContext
from workers.engine.core.types import Candidate
from workers.engine.data.synthetic import COLOURS
from workers.engine.methods.base import Pipeline


def colour_mask(rgb: np.ndarray, colour: str, tolerance: int = 60) -> np.ndarray:
    """``H x W`` bool: pixels within ``tolerance`` of the named colour in every channel (JPEG noise)."""
    target = np.array(COLOURS[colour], dtype=np.int32)
    return (np.abs(rgb.astype(np.int32) - target) <= tolerance).all(axis=2)


class ColourOraclePipeline(Pipeline):
    """One candidate per expression naming a synthetic colour; none otherwise."""

    config_class = OracleConfig
    config: OracleConfig

    def _predict(self, ctx: ImageContext, expressions: list[str]) -> list[list[Candidate]]:
        answers = []
        for text in expressions:
            colour = next((c for c in COLOURS if c in text.lower().split()), None)
            if colour is None:
                answers.append([])
                continue
            mask = colour_mask(ctx.rgb, colour, self.config.tolerance)
            answers.append(rank_candidates(Proposals.from_masks(mask[None]), [1.0], {"oracle": [1.0]}))
        return answers
