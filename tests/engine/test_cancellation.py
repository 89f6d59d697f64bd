"""Cancellation between batches (issue 15, kind 8): ``checkpoint`` stops the engine once the flag is set, the
mask generator checks it between decoder batches, and ``run_work`` ends a cancelled job without failing it."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from workers.engine.blocks.proposals.amg import generate_proposals, stock_proposals
from workers.engine.blocks.proposals.config import AmgConfig
from workers.engine.core.errors import CancelledError
from workers.engine.core.meter import Meter, cancellation, checkpoint
from workers.engine.store.loaders.sam import SAM_TINY_ARCH, build_sam_tiny
from workers.tasks.lifecycle import Lifecycle, run_work


def test_checkpoint_does_nothing_outside_a_cancellation_block() -> None:
    with cancellation(lambda: True, min_interval_s=0.0), pytest.raises(CancelledError):
        checkpoint("inside")  # inside a block that says "cancelled" it raises ...
    assert checkpoint("anything") is None  # ... and once the block is over nothing is asked or raised


def test_checkpoint_raises_once_cancelled_and_asks_at_most_every_interval() -> None:
    asked = []

    def flag() -> bool:
        asked.append(1)
        return len(asked) >= 3

    with cancellation(flag, min_interval_s=0.0):
        checkpoint()
        checkpoint()
        with pytest.raises(CancelledError, match="cancelled while running \\(decoder\\)"):
            checkpoint("decoder")
        with pytest.raises(CancelledError):  # stays cancelled without asking again
            checkpoint()
    assert len(asked) == 3
    asked.clear()
    with cancellation(lambda: asked.append(1) or False, min_interval_s=3600):
        for _ in range(100):
            checkpoint()
    assert len(asked) == 1


def test_meter_stages_and_model_calls_are_checkpoints() -> None:
    meter = Meter()
    with cancellation(lambda: True, min_interval_s=0.0):
        with pytest.raises(CancelledError, match="proposals"), meter.stage("proposals"):
            raise AssertionError("the stage body must not run once cancelled")
        with pytest.raises(CancelledError, match="sam_vit_b"), meter.model_call("sam_vit_b"):
            raise AssertionError("the model call must not run once cancelled")


def test_the_generator_stops_between_decoder_batches() -> None:
    torch.manual_seed(0)
    sam = build_sam_tiny(
        {**SAM_TINY_ARCH, "image_size": 64, "window_size": 2, "encoder_embed_dim": 16}
    ).eval()
    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    config = AmgConfig(points_per_side=8, points_per_batch=4)  # 16 decoder batches
    asked = []
    # checkpoints in order: the crop, 2 encoder blocks, then one per decoder batch; cancel at the 2nd batch
    flag = cancellation(lambda: asked.append(1) or len(asked) >= 5, min_interval_s=0.0)
    with flag, pytest.raises(CancelledError, match="decoder batch"):
        stock_proposals(sam, rgb, config)
    assert len(asked) == 5  # stopped at the second of 16 decoder batches


def test_the_fast_generator_stops_at_its_first_decoder_batch_once_cancelled() -> None:
    torch.manual_seed(0)
    sam = build_sam_tiny(
        {**SAM_TINY_ARCH, "image_size": 64, "window_size": 2, "encoder_embed_dim": 16}
    ).eval()
    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    reports: list[int] = []
    # the job is cancelled once the generator has reported its start (0 of n points): the next checkpoint
    # (an encoder block or the first decoder batch) stops it, and no further batch is reported
    flag = cancellation(lambda: bool(reports), min_interval_s=0.0)
    with flag, pytest.raises(CancelledError, match="image encoder|decoder batch"):
        generate_proposals(
            sam, rgb, AmgConfig(points_per_side=8), on_progress=lambda done, total: reports.append(done)
        )
    assert reports == [0]


def test_run_work_ends_a_cancelled_body_without_failing_it() -> None:
    beats, failed = [], []

    def beat(*, pk: int, attempt: int) -> bool:
        beats.append(pk)
        return len(beats) < 2  # the job is cancelled after the first check

    kind = Lifecycle(
        label="Job",
        claim=lambda *, pk, worker, task_id: SimpleNamespace(pk=pk, attempts=1),
        beat=beat,
        fail=lambda work, words: failed.append(words),
        stale_seconds=lambda: 3600.0,
    )

    def body(work) -> str:
        while True:  # an engine that would run forever without the checkpoint
            checkpoint("batch")

    task = SimpleNamespace(request=SimpleNamespace(hostname="w1", id="t1", retries=0))
    import workers.tasks.lifecycle as lifecycle

    previous = lifecycle.CANCEL_POLL_SECONDS
    lifecycle.CANCEL_POLL_SECONDS = 0.0
    try:
        assert run_work(task, kind, 7, body) == "cancelled"
    finally:
        lifecycle.CANCEL_POLL_SECONDS = previous
    assert failed == [] and beats == [7, 7]


def test_an_image_embedding_stops_between_encoder_blocks() -> None:
    torch.manual_seed(0)
    sam = build_sam_tiny(
        {**SAM_TINY_ARCH, "image_size": 64, "window_size": 2, "encoder_embed_dim": 16}
    ).eval()
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    generate_proposals(sam, rgb, AmgConfig(points_per_side=1))  # puts the hooks on the model
    asked = []
    blocks_run = []
    sam.image_encoder.blocks[1].register_forward_hook(lambda *a: blocks_run.append(1))
    flag = cancellation(lambda: asked.append(1) or len(asked) >= 2, min_interval_s=0.0)
    with flag, pytest.raises(CancelledError, match="image encoder"), torch.no_grad():
        sam.image_encoder(torch.zeros(1, 3, 64, 64))
    assert blocks_run == []  # stopped before the second block
