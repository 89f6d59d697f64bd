"""Background work yields at the engine's checkpoints (``workers.engine.core.yielding``): it pauses while
``should_wait`` says interactive work runs, resumes when it is done, never pauses past the ceiling, stays
cancellable while paused, and does nothing outside a ``yielding`` block. A fake clock keeps it instant."""

from __future__ import annotations

import pytest

from workers.engine.core.errors import CancelledError
from workers.engine.core.meter import Meter, cancellation, checkpoint
from workers.engine.core.yielding import yielding


class FakeTime:
    """A clock that moves only when slept on; ``busy_until`` makes ``should_wait`` True before that time."""

    def __init__(self, busy_until: float = 0.0) -> None:
        self.now = 0.0
        self.busy_until = busy_until
        self.asks: list[float] = []
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def should_wait(self) -> bool:
        self.asks.append(self.now)
        return self.now < self.busy_until

    def work(self, seconds: float) -> None:
        """One unit of background work: time passes without sleeping."""
        self.now += seconds


def _block(fake: FakeTime, **options):
    return yielding(fake.should_wait, clock=fake.clock, sleep=fake.sleep, **options)


def test_a_checkpoint_pauses_while_interactive_work_runs_and_resumes_when_it_is_done() -> None:
    fake = FakeTime(busy_until=3.0)
    with _block(fake, min_interval_s=0.5, max_wait_s=60) as stats:
        checkpoint("decoder batch 0")
        assert fake.now == pytest.approx(3.0)  # slept in 0.5 s steps until should_wait said False
    assert stats.pauses == 1 and stats.ceilings == 0 and stats.where == ["decoder batch 0"]
    assert stats.paused_s == pytest.approx(3.0)
    assert fake.sleeps == [0.5] * 6


def test_no_pause_when_nothing_interactive_runs_and_asks_at_most_every_interval() -> None:
    fake = FakeTime(busy_until=0.0)
    with _block(fake, min_interval_s=0.5, max_wait_s=60) as stats:
        for _ in range(10):  # ten units of 0.2 s: 2 s of work, asked at 0, 0.6, 1.2, 1.8
            checkpoint()
            fake.work(0.2)
    assert stats.pauses == 0 and not fake.sleeps
    assert fake.asks == pytest.approx([0.0, 0.6, 1.2, 1.8])


def test_at_most_one_unit_runs_once_interactive_work_has_started() -> None:
    fake = FakeTime(busy_until=float("inf"))
    fake.busy_until = -1.0  # nothing interactive yet
    units: list[float] = []
    with _block(fake, min_interval_s=0.5, max_wait_s=600) as stats:
        for unit in range(6):
            checkpoint(f"unit {unit}")
            units.append(fake.now)
            if unit == 1:  # an interactive job starts while unit 1 runs, for 10 s
                fake.busy_until = fake.now + 10.0
            fake.work(1.0)
    started_at = units[1]
    during = [t for t in units if started_at < t < started_at + 10.0]
    assert during == []  # unit 1 was under way; the next one waited until the job was done
    assert stats.pauses == 1 and units[2] >= started_at + 10.0
    assert len(units) == 6  # and the work went on to the end


def test_a_pause_never_lasts_past_the_ceiling_and_a_stuck_job_costs_one_ceiling() -> None:
    fake = FakeTime(busy_until=float("inf"))  # an interactive job that never ends
    with _block(fake, min_interval_s=0.5, max_wait_s=5.0) as stats:
        checkpoint("first")
        assert fake.now == pytest.approx(5.0)
        for _ in range(20):  # after the ceiling: no new pause while the same work still runs
            fake.work(1.0)
            checkpoint("later")
    assert stats.pauses == 1 and stats.ceilings == 1
    assert fake.now == pytest.approx(25.0)


def test_after_the_ceiling_it_pauses_again_once_interactive_work_was_seen_to_end() -> None:
    fake = FakeTime(busy_until=float("inf"))
    with _block(fake, min_interval_s=0.5, max_wait_s=2.0) as stats:
        checkpoint()  # cut short at 2 s
        fake.busy_until = fake.now  # the stuck job ends ...
        fake.work(1.0)
        checkpoint()  # ... seen here
        fake.busy_until = fake.now + 1.0 + 1.0  # a new interactive job
        fake.work(1.0)
        checkpoint()
    assert stats.pauses == 2 and stats.ceilings == 1


def test_the_off_switch_a_zero_ceiling_never_pauses_or_asks() -> None:
    fake = FakeTime(busy_until=float("inf"))
    with _block(fake, min_interval_s=0.5, max_wait_s=0.0) as stats:
        for _ in range(5):
            checkpoint()
            fake.work(1.0)
    assert stats.pauses == 0 and fake.asks == [] and fake.sleeps == []


def test_outside_a_yielding_block_a_checkpoint_never_pauses() -> None:
    fake = FakeTime(busy_until=float("inf"))
    with _block(fake, min_interval_s=0.5, max_wait_s=60):
        pass
    checkpoint("after the block")
    assert fake.asks == [] and fake.sleeps == []


def test_a_paused_block_stays_cancellable() -> None:
    fake = FakeTime(busy_until=float("inf"))
    cancel_at = 4.0
    with (
        cancellation(lambda: fake.now >= cancel_at, min_interval_s=0.0),
        _block(fake, min_interval_s=0.5, max_wait_s=600) as stats,
        pytest.raises(CancelledError, match="decoder"),
    ):
        checkpoint("decoder")
    assert fake.now == pytest.approx(cancel_at)  # the Cancel ended the pause, not the ceiling
    assert stats.pauses == 1 and stats.ceilings == 0


def test_meter_stages_and_model_calls_yield_too() -> None:
    fake = FakeTime(busy_until=2.0)
    meter = Meter()
    with _block(fake, min_interval_s=0.5, max_wait_s=60) as stats, meter.stage("proposals"):
        pass
    assert stats.where == ["proposals"] and fake.now == pytest.approx(2.0)


@pytest.mark.parametrize("options", [{"min_interval_s": 0.0}, {"max_wait_s": -1.0}])
def test_bad_settings_are_refused_in_words(options) -> None:
    with pytest.raises(ValueError, match="must be"), yielding(lambda: False, **options):
        pass


def test_the_fast_generator_pauses_between_decoder_batches_and_finds_the_same_masks() -> None:
    import numpy as np
    import torch

    from workers.engine.blocks.proposals.amg import generate_proposals
    from workers.engine.blocks.proposals.config import AmgConfig
    from workers.engine.blocks.proposals.fast_amg import DEFAULT_DECODE_BATCH
    from workers.engine.store.loaders.sam import SAM_TINY_ARCH, build_sam_tiny

    torch.manual_seed(0)
    sam = build_sam_tiny(
        {**SAM_TINY_ARCH, "image_size": 64, "window_size": 2, "encoder_embed_dim": 16}
    ).eval()
    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    # 24 x 24 = 576 points: several decoder batches; thresholds off, so masks survive
    config = AmgConfig(points_per_side=24, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    plain = generate_proposals(sam, rgb, config)

    ticks = iter(range(1_000_000))  # a clock that moves one second per read: every checkpoint asks
    asks: list[int] = []

    def busy() -> bool:  # interactive work at every other ask: each checkpoint pauses once, then resumes
        asks.append(1)
        return len(asks) % 2 == 1

    with yielding(
        busy, min_interval_s=0.5, max_wait_s=60, clock=lambda: float(next(ticks)), sleep=lambda s: None
    ) as stats:
        paused = generate_proposals(sam, rgb, config)
    batches = [where for where in stats.where if where == "automatic masks: decoder batch"]
    decoder_batches = -(-24 * 24 // DEFAULT_DECODE_BATCH)
    assert len(batches) == 1 + decoder_batches  # paused at the start report and after every decoder batch
    assert len(plain.rles) >= 1
    assert stats.ceilings == 0 and stats.pauses == len(stats.where)
    assert [r["counts"] for r in paused.rles] == [r["counts"] for r in plain.rles]  # when, never what
    assert np.array_equal(paused.predicted_iou, plain.predicted_iou)
