"""Image work under way elsewhere (``workers.engine.core.inflight``): a second worker waits for a live, nearly
done run of the same proposals (stage ``waiting``) and computes itself when the marker is stale, dead or
far from done. Two threads with separate caches over one cache folder stand for two worker processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.engine.ranking_fixtures import TINY_SAM_AMG, image_input, random_rgb, single_torch_thread
from workers.engine.blocks.proposals.cached import cached_proposals, proposal_params
from workers.engine.blocks.proposals.config import AmgConfig
from workers.engine.core.cache import CacheKey, FeatureCache, ImageContext
from workers.engine.core.inflight import Marker, marker_path, marking, read_marker, wait_for_peer
from workers.engine.hub import ModelHub

_ = single_torch_thread  # imported for pytest

SHA = "ab" * 32


@pytest.fixture
def entry(tmp_path: Path) -> tuple[FeatureCache, CacheKey, Path]:
    cache = FeatureCache(cache_dir=tmp_path)
    key = CacheKey(SHA, "proposals", "0123456789abcdef")
    path = cache.entry_path(key)
    assert path is not None
    return cache, key, path


def write_marker(entry: Path, **fields: float) -> None:
    now = time.time()
    state = {"pid": os.getpid(), "host": socket.gethostname(), "started": now, "heartbeat": now, "done": 0}
    state.update({"total": 100, **fields})
    marker_path(entry).parent.mkdir(parents=True, exist_ok=True)
    marker_path(entry).write_text(json.dumps(state))


def test_a_waiter_gets_the_value_a_live_marker_promised(entry) -> None:
    cache, key, path = entry
    heard: list[tuple[int, int]] = []

    def peer() -> None:
        with marking(path, beat_s=0.0) as marker:
            assert marker is not None
            for done in (0, 8, 16, 24, 32):
                marker.beat(done, 32)
                time.sleep(0.1)
            cache.put(key, {"value": 7})

    worker = threading.Thread(target=peer)
    worker.start()
    while read_marker(path) is None:
        time.sleep(0.01)
    reader = FeatureCache(cache_dir=cache.cache_dir)  # another process's memory: only the disk is shared
    value = wait_for_peer(
        path,
        lambda: reader.get(key) if reader.contains(key) else None,
        on_wait=lambda d, t: heard.append((d, t)),
    )
    worker.join()
    assert value == {"value": 7}
    assert heard and all(total == 32 for _, total in heard) and heard[-1][0] >= heard[0][0]
    assert not marker_path(path).exists()  # the computing side took its marker away


def test_no_marker_stale_dead_or_far_off_means_compute_yourself(entry) -> None:
    _, _, path = entry
    never = list[tuple[int, int]]()
    wait = lambda: wait_for_peer(path, lambda: None, on_wait=lambda d, t: never.append((d, t)), max_wait_s=30)  # noqa: E731
    assert wait() is None  # no marker at all

    write_marker(path, heartbeat=time.time() - 60)  # no heartbeat for a minute: hung or killed
    assert wait() is None

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    write_marker(path, pid=gone.pid)  # a fresh heartbeat, but its process is gone (this host)
    assert wait() is None

    write_marker(path, started=time.time() - 10, done=1, total=1000)  # ~10000 s left at its pace
    assert wait() is None

    write_marker(path, started=time.time() - 60, done=0)  # not one unit done in a minute
    assert wait() is None
    assert never == []  # none of those was worth waiting for


def test_a_live_marker_that_stops_beating_is_given_up(entry) -> None:
    _, _, path = entry
    clock = {"now": time.time()}
    write_marker(path, started=clock["now"], heartbeat=clock["now"], done=10, total=20)
    looks: list[int] = []

    def sleep(seconds: float) -> None:
        clock["now"] += 5.0  # time passes; the peer never beats again

    value = wait_for_peer(
        path,
        lambda: None,
        on_wait=lambda d, t: looks.append(d),
        stale_s=12.0,
        clock=lambda: clock["now"],
        sleep=sleep,
    )
    assert value is None and len(looks) == 3  # seen live at +0, +5, +10 s; stale at +15 s


def test_a_marker_beats_at_most_every_beat_s(tmp_path: Path) -> None:
    now = {"t": 100.0}
    marker = Marker(tmp_path / "x.pt", beat_s=1.0, clock=lambda: now["t"])
    marker.beat(1, 10, force=True)
    marker.beat(2, 10)  # too soon: not written
    assert read_marker(tmp_path / "x.pt").done == 1
    now["t"] += 1.5
    marker.beat(3, 10)
    state = read_marker(tmp_path / "x.pt")
    assert state.done == 3 and state.heartbeat == 101.5 and state.started == 100.0
    marker.remove()
    assert read_marker(tmp_path / "x.pt") is None


# -- the proposals of two workers ------------------------------------------------------------------------


def test_a_second_worker_waits_for_the_first_ones_proposals(model_hub: ModelHub, tmp_path: Path) -> None:
    rgb = random_rgb(64, 96, seed=3)
    amg = AmgConfig(**{**TINY_SAM_AMG, "points_per_side": 4})
    first_reports: list[tuple[str, int, int]] = []

    def slow(stage: str, done: int, total: int) -> None:  # a loaded preparer: each batch takes a while
        first_reports.append((stage, done, total))
        time.sleep(0.3)

    first = ImageContext(image=image_input(rgb), cache=FeatureCache(cache_dir=tmp_path), progress=slow)
    results: dict[str, object] = {}
    preparer = threading.Thread(
        target=lambda: results.update(first=cached_proposals(first, model_hub, "sam_tiny", amg))
    )
    preparer.start()
    entry = first.cache.entry_path(first.key("proposals", proposal_params(model_hub, "sam_tiny", amg)))
    while read_marker(entry) is None and preparer.is_alive():
        time.sleep(0.01)

    second_reports: list[tuple[str, int, int]] = []
    second = ImageContext(
        image=image_input(rgb),
        cache=FeatureCache(cache_dir=tmp_path),
        progress=lambda stage, done, total: second_reports.append((stage, done, total)),
    )
    ours = cached_proposals(second, model_hub, "sam_tiny", amg)
    preparer.join()
    assert first_reports and all(stage == "proposals" for stage, _, _ in first_reports)
    assert second_reports and {stage for stage, _, _ in second_reports} == {"waiting"}  # never generated
    # Its points as the first worker marked them: none before its generator began, then 16.
    assert second_reports[-1][2] == 16 and {total for _, _, total in second_reports} <= {0, 16}
    assert ours.rles == results["first"].rles
    assert second.meter.calls("sam_tiny") == 0 and not marker_path(entry).exists()


def test_a_dead_workers_marker_does_not_hold_up_the_proposals(model_hub: ModelHub, tmp_path: Path) -> None:
    rgb = random_rgb(64, 96, seed=4)
    amg = AmgConfig(**{**TINY_SAM_AMG, "points_per_side": 4})
    reports: list[tuple[str, int, int]] = []
    ctx = ImageContext(
        image=image_input(rgb),
        cache=FeatureCache(cache_dir=tmp_path),
        progress=lambda stage, done, total: reports.append((stage, done, total)),
    )
    entry = ctx.cache.entry_path(ctx.key("proposals", proposal_params(model_hub, "sam_tiny", amg)))
    write_marker(entry, heartbeat=time.time() - 3600, done=3, total=16)  # a worker killed an hour ago
    assert len(cached_proposals(ctx, model_hub, "sam_tiny", amg)) > 0
    assert {stage for stage, _, _ in reports} == {"proposals"}
    assert not marker_path(entry).exists()  # its own marker replaced the dead one, then went


def test_a_cancelled_run_takes_its_marker_away(model_hub: ModelHub, tmp_path: Path) -> None:
    class Cancelled(Exception):
        pass

    seen_marker: list[bool] = []

    def cancel_at_first_batch(stage: str, done: int, total: int) -> None:
        seen_marker.append(read_marker(entry) is not None)
        if done > 0:
            raise Cancelled

    rgb = random_rgb(64, 96, seed=5)
    amg = AmgConfig(**{**TINY_SAM_AMG, "points_per_side": 4})
    ctx = ImageContext(
        image=image_input(rgb), cache=FeatureCache(cache_dir=tmp_path), progress=cancel_at_first_batch
    )
    entry = ctx.cache.entry_path(ctx.key("proposals", proposal_params(model_hub, "sam_tiny", amg)))
    with pytest.raises(Cancelled):
        cached_proposals(ctx, model_hub, "sam_tiny", amg)
    assert seen_marker and all(seen_marker)  # marked while it ran
    assert not marker_path(entry).exists() and not entry.exists()  # nothing left: no marker, no value
