"""Grounded SAM 3: the MLLM prompts and the parsing of its answers, SAM 3's post-processing, the ranking."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from workers.engine.blocks.masks import Proposals
from workers.engine.methods.grounded_sam3.chat import draw_marks
from workers.engine.methods.grounded_sam3.pipeline import rank_instances
from workers.engine.methods.grounded_sam3.prompts import (
    Selection,
    noun_phrase_prompt,
    parse_noun_phrase,
    parse_selection,
    selection_prompt,
)
from workers.engine.methods.grounded_sam3.segment import instances_from_outputs

# -- prompts -----------------------------------------------------------------------------------------


def test_noun_phrase_prompt_quotes_the_expression_once_collapsed() -> None:
    prompt = noun_phrase_prompt("  the man   in red\n on the left ")
    assert '"the man in red on the left"' in prompt
    assert "noun phrase" in prompt and "nothing else" in prompt


def test_selection_prompt_lists_numbered_boxes_and_the_image_size() -> None:
    prompt = selection_prompt("left dog", [[0, 0, 10.4, 20.6], [30, 5, 40, 15]], (48, 64))
    assert '"left dog"' in prompt
    assert "2 candidate objects" in prompt and "64x48 image" in prompt
    assert "1: [0, 0, 10, 21]\n2: [30, 5, 40, 15]" in prompt
    assert '{"order": [' in prompt and '{"order": [], "reason": "..."}' in prompt


@pytest.mark.parametrize(
    ("answer", "phrase"),
    [
        ("man", "man"),
        ('"Red car."', "red car"),
        ("Noun phrase: the dog\nBecause it is on the left.", "the dog"),
        ("  Answer - Zebra!", "zebra"),
        ("", None),
        ("\n\n", None),
        ("s:s:s:s", None),  # not words: the caller uses spaCy's noun phrase
        ("1234", None),
        ("a very long answer that goes on and on about things", None),
    ],
)
def test_parse_noun_phrase(answer: str, phrase: str | None) -> None:
    assert parse_noun_phrase(answer) == phrase


def test_parse_selection_reads_json_order_and_reason() -> None:
    s = parse_selection('Sure! {"order": [2, 1], "reason": "the  left one"} done', 3)
    assert s.order == (1, 0) and s.reason == "the left one"
    assert not s.malformed and not s.none_found and s.invalid == ()


def test_parse_selection_drops_out_of_range_and_repeated_numbers() -> None:
    s = parse_selection('{"order": [5, 2, 0, 2, -1, 3], "reason": ""}', 3)
    assert s.order == (1, 2)
    assert s.invalid == (5, 0, -1)
    assert not s.malformed


def test_parse_selection_with_only_out_of_range_numbers_is_malformed() -> None:
    s = parse_selection('{"order": [7, 9]}', 3)
    assert s.order == () and s.invalid == (7, 9) and s.malformed and not s.none_found


def test_parse_selection_none_found() -> None:
    s = parse_selection('{"order": [], "reason": "no dog here"}', 4)
    assert s.order == () and s.none_found and not s.malformed and s.reason == "no dog here"
    assert parse_selection("None of them match.", 4).none_found


@pytest.mark.parametrize(
    ("answer", "order", "malformed"),
    [
        ("The answer is 3", (2,), False),  # no JSON: the numbers after the last label
        ("order: 2, 1", (1, 0), False),
        ('{"order": "2 then 1"}', (1, 0), False),  # a string of numbers inside JSON
        ('{"order": [1, "x"]}', (0,), False),  # lenient: the usable number is kept
        ('{"order": [1, {"id": 2}]}', (), True),  # an object inside the order: unusable
        ("{not json at all", (), True),
        ("s:s:s:s:", (), True),
        ("", (), True),
    ],
)
def test_parse_selection_malformed_answers(answer: str, order: tuple[int, ...], malformed: bool) -> None:
    s = parse_selection(answer, 3)
    assert (s.order, s.malformed) == (order, malformed)
    assert s.raw == answer
    assert Selection.from_state(s.to_state()) == s


# -- SAM 3 post-processing ---------------------------------------------------------------------------


def _outputs(mask_logits: np.ndarray, query_logits: list[float], presence: float | None) -> SimpleNamespace:
    q = len(query_logits)
    return SimpleNamespace(
        pred_logits=torch.tensor([query_logits], dtype=torch.float32),
        pred_boxes=torch.tensor([[[0.0, 0.0, 1.0, 1.0]] * q], dtype=torch.float32),
        pred_masks=torch.from_numpy(mask_logits.astype(np.float32))[None],
        presence_logits=None if presence is None else torch.tensor([[presence]], dtype=torch.float32),
    )


def test_sam3_instances_are_rle_at_image_size_ordered_by_score() -> None:
    from transformers import Sam3ImageProcessor

    processor = Sam3ImageProcessor()
    low = np.full((4, 8, 8), -20.0)
    low[0, 0:4, 0:4] = 20.0  # top-left quarter
    low[1, 4:8, 4:8] = 20.0  # bottom-right quarter
    low[2, :, :] = 20.0  # whole image, but its score is under the threshold
    # query 3: every logit negative -> an empty mask, dropped even though its score passes
    logits = [0.0, 3.0, -5.0, 3.0]  # sigmoid: 0.5, 0.953, 0.0067, 0.953
    out = instances_from_outputs(
        processor,
        _outputs(low, logits, presence=None),
        (30, 40),
        score_threshold=0.3,
        mask_threshold=0.5,
        max_instances=10,
    )
    assert isinstance(out, Proposals) and out.image_size == (30, 40) and len(out) == 2
    assert all(list(r["size"]) == [30, 40] for r in out.rles)
    # best score first: query 1 (0.953) before query 0 (0.5)
    assert out.predicted_iou.tolist() == pytest.approx([1 / (1 + np.exp(-3.0)), 0.5])
    first = mask_utils.decode({"size": [30, 40], "counts": out.rles[0]["counts"].encode()}).astype(bool)
    second = mask_utils.decode({"size": [30, 40], "counts": out.rles[1]["counts"].encode()}).astype(bool)
    assert first[25, 35] and not first[2, 2]  # bottom-right quarter, resized to 30 x 40
    assert second[2, 2] and not second[25, 35]
    assert abs(int(second.sum()) - 15 * 20) <= 40  # a quarter of the image, up to the bilinear edge
    assert out.bbox_xyxy[1].tolist() == pytest.approx([0, 0, 20, 15], abs=1.5)


def test_sam3_presence_scales_scores_and_max_instances_cuts() -> None:
    from transformers import Sam3ImageProcessor

    low = np.full((2, 8, 8), 20.0)
    out = instances_from_outputs(
        Sam3ImageProcessor(),
        _outputs(low, [5.0, 4.0], presence=-10.0),  # presence ~ 4.5e-5: nothing passes 0.3
        (16, 16),
        score_threshold=0.3,
        mask_threshold=0.5,
        max_instances=10,
    )
    assert len(out) == 0 and out.image_size == (16, 16)
    out = instances_from_outputs(
        Sam3ImageProcessor(),
        _outputs(low, [5.0, 4.0], presence=10.0),
        (16, 16),
        score_threshold=0.3,
        mask_threshold=0.5,
        max_instances=1,
    )
    assert len(out) == 1 and out.area.tolist() == [256]


# -- ranking -----------------------------------------------------------------------------------------


def _instances() -> Proposals:
    masks = np.zeros((3, 10, 10), dtype=bool)
    masks[0, 0:2, 0:2] = True
    masks[1, 5:10, 5:10] = True
    masks[2, 0:5, 5:10] = True
    return Proposals.from_masks(masks, predicted_iou=np.array([0.9, 0.6, 0.8]))


def test_ranking_puts_the_llm_order_first_then_sam3_scores() -> None:
    ranked = rank_instances(_instances(), parse_selection('{"order": [2]}', 3), fallback=False)
    assert [c.components["sam3_score"] for c in ranked] == pytest.approx([0.6, 0.9, 0.8])
    assert [c.components["llm_rank"] for c in ranked] == [1.0, -1.0, -1.0]
    assert [c.components["llm_chosen"] for c in ranked] == [1.0, 0.0, 0.0]
    assert [c.rank for c in ranked] == [0, 1, 2]
    scores = [c.score for c in ranked]
    assert scores == sorted(scores, reverse=True) and scores[0] == 2.0
    assert all(list(c.rle["size"]) == [10, 10] for c in ranked)


def test_ranking_without_a_usable_answer_keeps_sam3_order_and_flags_it() -> None:
    ranked = rank_instances(_instances(), parse_selection("garbage", 3), fallback=True)
    assert [c.components["sam3_score"] for c in ranked] == pytest.approx([0.9, 0.8, 0.6])
    assert all(c.components["malformed"] == 1.0 and c.components["fallback"] == 1.0 for c in ranked)
    single = rank_instances(_instances().filter([1]), None, fallback=False)
    assert len(single) == 1 and single[0].components["malformed"] == 0.0


def test_marks_are_drawn_on_a_copy() -> None:
    rgb = np.zeros((40, 60, 3), dtype=np.uint8)
    marked = draw_marks(rgb, np.array([[5, 5, 30, 30], [35, 10, 55, 35]], dtype=float))
    assert marked.shape == rgb.shape and marked.dtype == np.uint8
    assert rgb.sum() == 0 and marked.sum() > 0
    assert marked[5, 15].any() and not marked[20, 20].any()  # the box's edge, not its inside
