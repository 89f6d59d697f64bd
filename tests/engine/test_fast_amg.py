"""The fast automatic mask generator gives the stock generator's output; its embedding serves refine clicks;
early candidates come from a coarse grid first (``Engine.predict(on_partial=...)``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from segment_anything.utils.amg import calculate_stability_score

from tests.engine.ranking_fixtures import TINY_SAM_AMG, image_input, random_rgb, single_torch_thread
from workers.engine.blocks.masks import encode_rle, rle_area
from workers.engine.blocks.proposals.amg import generate_proposals, stock_proposals
from workers.engine.blocks.proposals.cached import (
    EMBEDDING_KIND,
    cached_proposals,
    embedding_params,
    proposals_cached,
)
from workers.engine.blocks.proposals.config import AmgConfig
from workers.engine.blocks.proposals.fast_amg import FastMaskGenerator
from workers.engine.core.cache import FeatureCache, ImageContext
from workers.engine.core.settings import EngineSettings
from workers.engine.hub import ModelHub
from workers.engine.runtime import Engine, Prediction

_ = single_torch_thread  # imported for pytest


class Cancelled(Exception):
    pass


def assert_same(ours: Any, stock: Any) -> None:
    """Same masks in the same order, same scores."""
    assert len(ours) == len(stock)
    assert ours.rles == stock.rles
    np.testing.assert_allclose(ours.predicted_iou, stock.predicted_iou, rtol=0, atol=1e-5)
    np.testing.assert_allclose(ours.stability_score, stock.stability_score, rtol=0, atol=1e-5)


# -- agreement with the stock generator ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "amg_settings",
    [
        {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0},
        {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 0.5},
        {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "crop_n_layers": 1},
    ],
    ids=["no-thresholds", "nms", "crops"],
)
def test_tiny_sam_matches_the_stock_generator(
    model_hub: ModelHub, single_torch_thread: None, amg_settings: dict
) -> None:
    sam = model_hub.get("sam_tiny")
    rgb = random_rgb(48, 64, seed=3)
    config = AmgConfig(**amg_settings)
    stock = stock_proposals(sam, rgb, config)
    generator = FastMaskGenerator(sam, config, decode_batch=5)  # batches unlike stock's 64
    ours, embedding = generator.generate(rgb)
    assert len(stock) > 0, "the comparison needs masks"
    assert_same(ours, stock)
    assert embedding.original_size == (48, 64)
    assert generator.stats.points == (16 if not config.crop_n_layers else 16 * 5)


def test_nothing_survives_gives_an_empty_result_also_with_crops(model_hub: ModelHub) -> None:
    sam = model_hub.get("sam_tiny")
    rgb = random_rgb(40, 40, seed=1)
    for layers in (0, 1):
        config = AmgConfig(points_per_side=2, pred_iou_thresh=1.0, crop_n_layers=layers)
        proposals = generate_proposals(sam, rgb, config)
        assert len(proposals) == 0 and proposals.image_size == (40, 40)
    # Masks may survive the filters and all touch the crop edges: still an empty list, no IndexError.
    config = AmgConfig(points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0, crop_n_layers=1)
    assert generate_proposals(sam, rgb, config).image_size == (40, 40)


def test_the_low_resolution_prefilter_drops_only_clear_losers(model_hub: ModelHub) -> None:
    sam = model_hub.get("sam_tiny")
    config = AmgConfig(points_per_side=2, stability_score_thresh=0.9)
    generator = FastMaskGenerator(sam, config, margin=0.1)
    generator._set_image(random_rgb(32, 32, seed=5), None)
    side = 4 * sam.prompt_encoder.image_embedding_size[0]
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    square = (yy < side // 2) & (xx < side // 2)
    ramp = (side // 2 - xx).float()  # one logit per pixel: the +-1 band is two columns wide
    logits = torch.stack(
        [
            torch.full((side, side), -5.0),  # nothing above -1: empty at full resolution too
            torch.full((side, side), 0.5),  # nothing above +1: stability 0 at full resolution too
            torch.where(square, 10.0, -10.0),  # sharp: stability 1
            ramp * 0.01,  # soft: low-res stability far below 0.9 - 0.1
            ramp * 0.08,  # low-res stability a little below 0.9, within the margin: to the exact test
        ]
    )
    low_res_score = calculate_stability_score(logits, 0.0, 1.0)
    assert low_res_score[3] < 0.5 and 0.8 <= low_res_score[4] < 0.9
    assert generator._low_res_keep(logits).tolist() == [False, False, True, False, True]
    generator.margin = 0.0
    assert generator._low_res_keep(logits).tolist() == [False, False, True, False, False]
    with pytest.raises(ValueError, match="margin"):
        FastMaskGenerator(sam, config, margin=-0.1)
    with pytest.raises(ValueError, match="decode_batch"):
        FastMaskGenerator(sam, config, decode_batch=0)
    with pytest.raises(ValueError, match="decoder"):
        FastMaskGenerator(sam, config, decoder="fancy")


def test_the_stock_decoder_option_is_bit_equal_to_the_stock_generator(model_hub: ModelHub) -> None:
    sam = model_hub.get("sam_tiny")
    rgb = random_rgb(40, 56, seed=4)
    config = AmgConfig(points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    ours, _ = FastMaskGenerator(sam, config, decoder="stock").generate(rgb)
    stock = stock_proposals(sam, rgb, config)
    assert len(stock) > 0 and ours.rles == stock.rles
    assert ours.predicted_iou.tolist() == stock.predicted_iou.tolist()
    assert ours.stability_score.tolist() == stock.stability_score.tolist()


def test_many_masks_are_counted(model_hub: ModelHub) -> None:
    # pycocotools 2.0.11 overflows counting 256 or more masks at once; rle_area counts in chunks.
    masks = np.zeros((300, 8, 8), dtype=bool)
    masks[:, :2, :3] = True
    masks[299, 7, 7] = True
    area = rle_area(encode_rle(masks))
    assert area.shape == (300,) and area[0] == 6 and area[299] == 7


@pytest.mark.slow
def test_mobile_sam_matches_the_stock_generator_on_a_real_photo(
    model_hub: ModelHub, astronaut_rgb: np.ndarray
) -> None:
    sam = model_hub.get("mobile_sam")
    config = AmgConfig(points_per_side=6, pred_iou_thresh=0.86, stability_score_thresh=0.92)
    stock = stock_proposals(sam, astronaut_rgb, config)
    ours = generate_proposals(sam, astronaut_rgb, config)
    assert len(stock) >= 3
    assert_same(ours, stock)


# -- progress and cancellation -------------------------------------------------------------------------------


def test_progress_counts_points_and_a_raising_callback_stops_the_run(
    model_hub: ModelHub, tmp_path: Path
) -> None:
    sam = model_hub.get("sam_tiny")
    rgb = random_rgb(32, 32, seed=2)
    config = AmgConfig(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    seen: list[tuple[int, int]] = []
    FastMaskGenerator(sam, config, decode_batch=6).generate(rgb, on_progress=lambda d, t: seen.append((d, t)))
    assert seen == [(0, 16), (6, 16), (12, 16), (16, 16)]

    reports: list[tuple[str, int, int]] = []

    def cancel_after_first_batch(stage: str, done: int, total: int) -> None:
        reports.append((stage, done, total))
        if done > 0:
            raise Cancelled

    ctx = ImageContext(
        image=image_input(rgb), cache=FeatureCache(cache_dir=tmp_path), progress=cancel_after_first_batch
    )
    amg = AmgConfig(**{**TINY_SAM_AMG, "points_per_side": 4})
    with pytest.raises(Cancelled):
        cached_proposals(ctx, model_hub, "sam_tiny", amg)
    assert reports[0] == ("proposals", 0, 16) and len(reports) == 2
    assert not proposals_cached(ctx, model_hub, "sam_tiny", amg)  # nothing half-done was kept
    # The embedding was cached before the first decoder batch: a click on this image (in another worker
    # process, through the disk cache) runs only the prompt decoder, even while the grid is being decoded.
    other_process = FeatureCache(cache_dir=tmp_path)
    assert other_process.contains(ctx.key(EMBEDDING_KIND, embedding_params(model_hub, "sam_tiny")))
    ctx.progress = None
    assert len(cached_proposals(ctx, model_hub, "sam_tiny", amg)) > 0
    assert proposals_cached(ctx, model_hub, "sam_tiny", amg)


# -- the engine: embedding reuse and early candidates --------------------------------------------------------


@pytest.fixture
def engine(model_store: Any, model_hub: Any, tmp_path: Path, single_torch_thread: None) -> Engine:
    settings = EngineSettings(
        model_dir=model_store.root, cache_dir=tmp_path / "cache", device="cpu", profile="tiny"
    )
    return Engine(settings, hub=model_hub)


def test_a_click_after_proposals_runs_only_the_prompt_decoder(engine: Engine) -> None:
    image = image_input(random_rgb(48, 64, seed=7))
    config = {"proposal_source": "sam_tiny", "amg": TINY_SAM_AMG}
    engine.predict(image, ["a thing"], pipeline="global_local", config=config)
    assert engine.meter.calls("sam_tiny:encoder") == 1
    engine.refine(image, points_xy=[(20.0, 10.0)], labels=[1], sam_model="sam_tiny")
    engine.refine(image, points_xy=[(30.0, 20.0)], labels=[1], sam_model="sam_tiny")
    assert engine.meter.calls("sam_tiny:encoder") == 1  # the clicks used the generator's embedding
    assert engine.meter.calls("sam_tiny:decoder") == 2


def test_proposals_after_a_click_reuse_its_embedding(engine: Engine) -> None:
    image = image_input(random_rgb(48, 64, seed=8))
    engine.refine(image, points_xy=[(20.0, 10.0)], labels=[1], sam_model="sam_tiny")
    assert engine.meter.calls("sam_tiny:encoder") == 1
    engine.predict(
        image,
        ["a thing"],
        pipeline="global_local",
        config={"proposal_source": "sam_tiny", "amg": TINY_SAM_AMG},
    )
    assert engine.meter.calls("sam_tiny:encoder") == 1


def test_early_candidates_come_from_a_coarse_grid_then_the_full_one(engine: Engine) -> None:
    image = image_input(random_rgb(48, 64, seed=9))
    config = {"proposal_source": "sam_tiny", "amg": {**TINY_SAM_AMG, "points_per_side": 12}}
    partials: list[Prediction] = []
    stages: list[tuple[str, int, int]] = []
    final = engine.predict(
        image,
        ["a thing", "the other thing"],
        pipeline="global_local",
        config=config,
        top_k=3,
        on_partial=partials.append,
        on_progress=lambda *report: stages.append(report),
    )
    assert len(partials) == 1 and partials[0].partial and not final.partial
    assert partials[0].config["amg"]["points_per_side"] == 8 and final.config["amg"]["points_per_side"] == 12
    assert len(partials[0].candidates) == 2 and all(0 < len(c) <= 3 for c in partials[0].candidates)
    assert ("proposals", 64, 64) in stages and ("proposals", 144, 144) in stages
    assert engine.meter.calls("sam_tiny:encoder") == 1  # the full grid reused the coarse run's embedding
    # A second expression on the prepared image: no early candidates, the final ones at once.
    again: list[Prediction] = []
    engine.predict(image, ["a thing"], pipeline="global_local", config=config, on_partial=again.append)
    assert again == []
    # A grid already coarse: no early pass either.
    coarse_only: list[Prediction] = []
    other = image_input(random_rgb(48, 64, seed=10))
    engine.predict(
        other,
        ["a thing"],
        pipeline="global_local",
        config={"proposal_source": "sam_tiny", "amg": TINY_SAM_AMG},
        on_partial=coarse_only.append,
    )
    assert coarse_only == []
