"""The fast generator's speed settings (``AmgConfig.skip_covered_points``, ``decoder_precision``): the pass
order of the point grid, the skip rule, the bfloat16 decoder's agreement with float32, and on a real photo
how far the output stays from the stock generator's (the figures of docs/perf/amg.md come from
``scripts/bench_amg.py``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.engine.ranking_fixtures import random_rgb, single_torch_thread
from workers.engine.blocks.masks import mask_iou
from workers.engine.blocks.proposals.amg import stock_proposals
from workers.engine.blocks.proposals.cached import proposal_params
from workers.engine.blocks.proposals.config import AmgConfig
from workers.engine.blocks.proposals.decoder import decode_points
from workers.engine.blocks.proposals.fast_amg import FastMaskGenerator, grid_passes
from workers.engine.core.errors import ConfigError
from workers.engine.hub import ModelHub

_ = single_torch_thread  # imported for pytest


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 16, 17, 32])
@pytest.mark.parametrize("coarsest", [1, 2, 4])
def test_grid_passes_hold_every_point_once_each_near_an_earlier_one(n: int, coarsest: int) -> None:
    passes = grid_passes(n, coarsest)
    order = np.concatenate([members for members, _ in passes])
    assert sorted(order.tolist()) == list(range(n * n))  # every point, once
    rows, cols = np.divmod(np.arange(n * n), n)
    first, top = passes[0]
    assert top == coarsest and set(first.tolist()) == {
        k for k in range(n * n) if rows[k] % coarsest == 0 and cols[k] % coarsest == 0
    }
    held = set(first.tolist())
    for members, spacing in passes[1:]:
        for k in members.tolist():
            near = [
                j for j in held if abs(rows[j] - rows[k]) <= spacing and abs(cols[j] - cols[k]) <= spacing
            ]
            assert near, f"point {k} of a spacing-{spacing} pass has no earlier neighbour"
        held |= set(members.tolist())


def test_a_point_is_covered_only_inside_a_near_alike_segment() -> None:
    n = 4
    rows, cols = np.divmod(np.arange(n * n), n)
    low_xy = np.stack([cols * 10 + 5, rows * 10 + 5], axis=1)  # point k sits at low-res pixel (x, y)
    segment = torch.zeros(40, 40, dtype=torch.bool)
    segment[:20, :20] = True  # covers points 0, 1, 4, 5

    def covers_of(segs: dict[int, torch.Tensor]) -> dict[int, np.ndarray]:  # as the generator reads them
        return {j: seg[low_xy[:, 1], low_xy[:, 0]].numpy() for j, seg in segs.items()}

    segments = covers_of({0: segment})
    alike = torch.ones(n * n, n * n, dtype=torch.bool)
    covered = FastMaskGenerator._covered
    assert covered(5, rows, cols, 1, segments, alike)  # one row and column away, inside
    assert not covered(2, rows, cols, 2, segments, alike)  # near enough but outside the segment
    assert not covered(5, rows, cols, 1, {}, alike)  # no decoded neighbour
    far = covers_of({15: torch.ones(40, 40, dtype=torch.bool)})
    assert not covered(5, rows, cols, 1, far, alike)  # point 15 is two rows and columns away
    assert covered(5, rows, cols, 2, far, alike)
    alike[5, 0] = False
    assert not covered(5, rows, cols, 1, segments, alike)  # a different look is decoded itself


def test_the_speed_settings_are_checked_and_keyed(model_hub: ModelHub) -> None:
    with pytest.raises(ConfigError, match="decoder_precision"):
        AmgConfig.from_dict({"decoder_precision": "float16"})
    with pytest.raises(ConfigError, match="skip_similarity"):
        AmgConfig.from_dict({"skip_similarity": 1.5})
    exact = proposal_params(model_hub, "sam_tiny", AmgConfig())
    fast = proposal_params(
        model_hub, "sam_tiny", AmgConfig(skip_covered_points=True, decoder_precision="bfloat16")
    )
    assert exact != fast  # a fast run never serves an exact request from the cache, nor the reverse


def test_the_bfloat16_decoder_agrees_with_float32(model_hub: ModelHub, single_torch_thread: None) -> None:
    sam = model_hub.get("sam_tiny")
    generator = FastMaskGenerator(sam, AmgConfig(points_per_side=4))
    generator._set_image(random_rgb(48, 64, seed=7), None)
    predictor = generator.predictor
    points = np.array([[5.0, 5.0], [30.0, 20.0], [60.0, 40.0]])
    coords = torch.as_tensor(predictor.transform.apply_coords(points, (48, 64)), dtype=torch.float)[:, None]
    sparse, dense = sam.prompt_encoder(
        points=(coords, torch.ones(3, 1, dtype=torch.int)), boxes=None, masks=None
    )
    args = (sam.mask_decoder, predictor.features, sam.prompt_encoder.get_dense_pe(), sparse, dense[:1])
    logits32, iou32 = decode_points(*args)
    logits16, iou16 = decode_points(*args, dtype=torch.bfloat16)
    assert logits16.dtype == torch.float32 and logits16.shape == logits32.shape
    scale = float(logits32.abs().max())
    assert scale > 0
    assert float((logits16 - logits32).abs().max()) <= 0.05 * scale  # bfloat16: about 3 significant digits
    assert float((iou16 - iou32).abs().max()) <= 0.05
    assert float((logits16 - logits32).abs().max()) > 0  # it did run in the lower precision


def test_skipping_counts_every_point_and_reports_progress_to_the_end(
    model_hub: ModelHub, single_torch_thread: None
) -> None:
    sam = model_hub.get("sam_tiny")
    config = AmgConfig(
        points_per_side=8,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        skip_covered_points=True,
        skip_similarity=-1.0,  # every neighbour looks alike: skip wherever a segment covers
    )
    seen: list[tuple[int, int]] = []
    generator = FastMaskGenerator(sam, config, decode_batch=7)
    proposals, _ = generator.generate(
        random_rgb(48, 64, seed=2), on_progress=lambda d, t: seen.append((d, t))
    )
    stats = generator.stats
    assert stats.points + stats.points_skipped == 64
    assert stats.points_skipped > 0 and len(proposals) > 0
    assert seen[0] == (0, 64) and seen[-1] == (64, 64)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


@pytest.mark.slow
def test_fast_settings_keep_the_stock_masks_on_a_real_photo(
    model_hub: ModelHub, astronaut_rgb: np.ndarray
) -> None:
    sam = model_hub.get("mobile_sam")
    config = AmgConfig(points_per_side=12)
    stock = stock_proposals(sam, astronaut_rgb, config)
    fast_config = AmgConfig(points_per_side=12, skip_covered_points=True, decoder_precision="bfloat16")
    generator = FastMaskGenerator(sam, fast_config)
    fast, _ = generator.generate(astronaut_rgb)
    assert len(stock) >= 10
    assert generator.stats.points_skipped > 0
    best = mask_iou(stock.rles, fast.rles).max(axis=1)
    assert float((best >= 0.9).mean()) >= 0.95  # the agreement bar
