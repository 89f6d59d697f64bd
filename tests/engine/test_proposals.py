"""Mask proposals: generator settings, the post-filters (docs/METHODS.md#post-filters), real MobileSAM on a real photo, refine."""

from __future__ import annotations

import numpy as np
import pytest

from workers.engine.blocks.masks import Proposals
from workers.engine.blocks.proposals.amg import (
    generate_proposals,
    postprocess_small_regions,
    remove_small_regions,
    stock_proposals,
)
from workers.engine.blocks.proposals.config import TAS_AMG_CONFIG, AmgConfig
from workers.engine.blocks.proposals.filters import drop_overlapping, drop_small, keep_largest
from workers.engine.blocks.proposals.refine import PromptRefiner
from workers.engine.core.errors import BadInputError, ConfigError
from workers.engine.hub import ModelHub


def rect_masks(h: int, w: int, boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    masks = np.zeros((len(boxes), h, w), dtype=bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        masks[i, y0:y1, x0:x1] = True
    return masks


# settings ------------------------------------------------------------------------------------------------


def test_amg_config_round_trip_and_validation() -> None:
    config = AmgConfig.from_dict({"points_per_side": 8, "pred_iou_thresh": 0.7})
    assert config.points_per_side == 8 and config.box_nms_thresh == 0.7
    assert AmgConfig.from_dict(config.to_dict()) == config
    assert TAS_AMG_CONFIG.min_mask_region_area == 800 and TAS_AMG_CONFIG.stability_score_thresh == 0.7
    with pytest.raises(ConfigError, match="points_per_sid"):
        AmgConfig.from_dict({"points_per_sid": 8})
    with pytest.raises(ConfigError, match="pred_iou_thresh"):
        AmgConfig(pred_iou_thresh=1.5)
    with pytest.raises(ConfigError, match="points_per_side"):
        AmgConfig(points_per_side=0)


# post-filters ----------------------------------------------------------------------------------------------


def test_drop_small_inclusive_and_strict() -> None:
    p = Proposals.from_masks(rect_masks(20, 20, [(0, 0, 10, 10), (0, 0, 5, 4), (0, 0, 2, 2)]))
    assert p.area.tolist() == [100, 20, 4]
    assert drop_small(p, 20).area.tolist() == [100, 20]
    assert drop_small(p, 20, keep_equal=False).area.tolist() == [100]
    assert len(drop_small(p, 0)) == 3


def test_drop_overlapping_greedy_and_peer_compat_differ_on_a_chain() -> None:
    # X (rows 0-19), Y (rows 12-23), Z (rows 21-29), all 20 px wide: a chain X - Y - Z.
    masks = rect_masks(40, 20, [(0, 0, 20, 20), (0, 12, 20, 24), (0, 21, 20, 30)])
    p = Proposals.from_masks(masks)
    assert p.area.tolist() == [400, 240, 180]
    # overlap / smaller area: X-Y 160/240 = 0.67, Y-Z 60/180 = 0.33, X-Z 0.
    # Greedy: X kept, Y dropped by X, Z meets only the dropped Y and stays.
    assert drop_overlapping(p, 0.25).area.tolist() == [400, 180]
    # TAS code: every offending pair drops its smaller mask, so the dropped Y still drops Z.
    assert drop_overlapping(p, 0.25, peer_compat=True).area.tolist() == [400]
    # Above both overlaps nothing is dropped; equal to the X-Y overlap (not strictly above) neither.
    assert len(drop_overlapping(p, 0.7)) == 3
    assert len(drop_overlapping(p, 160 / 240)) == 3
    with pytest.raises(ConfigError, match="threshold"):
        drop_overlapping(p, 1.5)


def test_drop_overlapping_keeps_disjoint_masks_and_order() -> None:
    p = Proposals.from_masks(rect_masks(30, 30, [(0, 0, 5, 5), (10, 10, 20, 20), (25, 25, 30, 30)]))
    assert drop_overlapping(p, 0.0).area.tolist() == [25, 100, 25]


def test_keep_largest() -> None:
    p = Proposals.from_masks(rect_masks(30, 30, [(0, 0, 2, 2), (0, 0, 6, 6), (0, 0, 4, 4), (0, 0, 6, 6)]))
    top = keep_largest(p, 3)
    assert top.area.tolist() == [36, 36, 16]
    assert top.rles[0] == p.rles[1]  # equal areas: the earlier first
    assert len(keep_largest(p, 10)) == 4


def test_remove_small_regions_fills_holes_and_drops_islands() -> None:
    mask = np.zeros((30, 30), dtype=bool)
    mask[5:25, 5:25] = True
    mask[10:12, 10:12] = False  # a 4 px hole
    mask[0:2, 28:30] = True  # a 4 px island
    filled, changed = remove_small_regions(mask, 10, "holes")
    assert changed and filled[10:12, 10:12].all() and filled[0:2, 28:30].all()
    cleaned, changed = remove_small_regions(filled, 10, "islands")
    assert changed and not cleaned[0:2, 28:30].any() and cleaned.sum() == 400
    same, changed = remove_small_regions(cleaned, 10, "islands")
    assert not changed and np.array_equal(same, cleaned)
    only_small = np.zeros((10, 10), dtype=bool)
    only_small[0, 0] = True
    only_small[5:7, 5:7] = True
    kept, _ = remove_small_regions(only_small, 100, "islands")
    assert kept.sum() == 4  # all islands small: the largest stays


def test_postprocess_small_regions_prefers_unchanged_masks() -> None:
    clean = np.zeros((40, 40), dtype=bool)
    clean[0:20, 0:20] = True
    speckled = clean.copy()
    speckled[30, 30] = True  # same box after clean-up, but changed
    p = Proposals.from_masks(np.stack([speckled, clean]), predicted_iou=[0.99, 0.5])
    out = postprocess_small_regions(p, 10, nms_thresh=0.7)
    assert len(out) == 1 and out.predicted_iou.tolist() == [0.5]
    assert out.area.tolist() == [400]


# models ------------------------------------------------------------------------------------------------------


def test_sam_tiny_runs_through_the_real_generator(model_hub: ModelHub) -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    config = AmgConfig(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    p = generate_proposals(model_hub.get("sam_tiny"), rgb, config)
    assert p.image_size == (64, 96)
    assert all(r["size"] == [64, 96] for r in p.rles)
    assert np.array_equal(p.area, p.to_numpy().reshape(len(p), -1).sum(axis=1))


def test_generate_refuses_a_bad_image(model_hub: ModelHub) -> None:
    with pytest.raises(BadInputError, match="H x W x 3 uint8"):
        generate_proposals(model_hub.get("sam_tiny"), np.zeros((10, 10), dtype=np.uint8))


@pytest.mark.slow
def test_mobile_sam_automatic_masks_on_a_real_photo(model_hub: ModelHub, astronaut_rgb: np.ndarray) -> None:
    config = AmgConfig(points_per_side=8, pred_iou_thresh=0.88, stability_score_thresh=0.92)
    p = generate_proposals(model_hub.get("mobile_sam"), astronaut_rgb, config)
    image_area = astronaut_rgb.shape[0] * astronaut_rgb.shape[1]
    assert len(p) >= 5
    assert (p.area >= 0.001 * image_area).all() and (p.area <= 0.95 * image_area).all()
    assert (p.predicted_iou >= 0.88).all() and (p.stability_score >= 0.92).all()
    # Boxes and areas are those of the masks themselves.
    decoded = p.to_numpy()
    assert np.array_equal(p.area, decoded.reshape(len(p), -1).sum(axis=1))
    # SAM's box NMS lets near-duplicate masks through when a stray pixel widens one box; the overlap
    # filter removes them.
    from workers.engine.blocks.proposals.filters import overlap_over_smaller

    deduplicated = drop_overlapping(p, 0.9)
    assert overlap_over_smaller(deduplicated).max() <= 0.9
    filtered = keep_largest(drop_overlapping(drop_small(p, 500), 0.4), 10)
    assert 1 <= len(filtered) <= 10
    assert filtered.area.tolist() == sorted(filtered.area.tolist(), reverse=True)


@pytest.mark.slow
def test_refine_with_a_point_returns_a_mask_holding_it(
    model_hub: ModelHub, astronaut_rgb: np.ndarray
) -> None:
    sam = model_hub.get("mobile_sam")
    refiner = PromptRefiner(sam)
    embedding = refiner.set_image(astronaut_rgb)
    assert embedding.features.shape == (1, 256, 64, 64) and embedding.original_size == (256, 256)
    x, y = 128, 60  # the astronaut's face
    mask, score = refiner.refine([(x, y)], [1])
    assert mask.shape == (256, 256) and mask[y, x]
    assert 0 < mask.sum() < 0.9 * mask.size and 0.0 < score <= 1.5

    # A second refiner fed the cached embedding answers without the encoder, identically.
    cached = PromptRefiner(sam)
    cached.set_embedding(embedding)
    again, again_score = cached.refine([(x, y)], [1])
    assert cached.encoder_calls == 0 and np.array_equal(again, mask) and again_score == pytest.approx(score)

    # Click-to-correct: the previous mask plus a removing click away from the face.
    corrected, _ = cached.refine([(x, y), (20, 240)], [1, 0], mask_input=mask)
    assert corrected[y, x] and not corrected[240, 20]
    boxed, _ = cached.refine([], [], box_xyxy=(90, 20, 170, 110))
    assert boxed[y, x]

    with pytest.raises(BadInputError, match="inside"):
        cached.refine([(300, 10)], [1])
    with pytest.raises(BadInputError, match="point or a box"):
        cached.refine([], [])
    with pytest.raises(BadInputError, match="labels"):
        cached.refine([(1, 1)], [2])
    tiny = PromptRefiner(model_hub.get("sam_tiny"))
    with pytest.raises(BadInputError, match="another model"):
        tiny.set_embedding(embedding)


def test_stock_generator_reports_every_point(model_hub: ModelHub) -> None:
    from workers.engine.core.meter import Meter

    meter = Meter()
    heard: list[tuple] = []
    rgb = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    config = AmgConfig(points_per_side=4, points_per_batch=5, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    with meter.active(), meter.watch(lambda *event: heard.append(event)):
        stock_proposals(model_hub.get("sam_tiny"), rgb, config)
    assert [event[1] for event in heard] == [5, 10, 15, 16]
    assert {event[2] for event in heard} == {16}
    # The fast generator decodes in its own (larger) batches: it reports from 0 to every point, in order.
    heard.clear()
    with meter.active(), meter.watch(lambda *event: heard.append(event)):
        generate_proposals(model_hub.get("sam_tiny"), rgb, config)
    done = [event[1] for event in heard]
    assert done[0] == 0 and done[-1] == 16 and done == sorted(done)
    assert {event[2] for event in heard} == {16}
