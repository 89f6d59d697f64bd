"""Stage-wise progress of a job: the engine's stages and point counts reach the job row, with an
estimate; a cancel noticed at a progress report stops the engine."""

from __future__ import annotations

import pytest

from server.ris.models import JobState, SegmentationJob
from tests.server.factories import expression_make, image_make, job_of
from tests.server.test_tasks import FakeEngine
from workers.engine.core.meter import Meter
from workers.tasks import engine_access
from workers.tasks import segmentation as tasks
from workers.tasks.progress import JobProgress, JobStopped, stage_seconds


class SteppingEngine(FakeEngine):
    """Goes through proposals (reporting points), features and scoring; calls ``during`` at each report."""

    def __init__(self, during=None) -> None:
        super().__init__()
        self.during = during or (lambda: None)

    def predict(self, image, expressions, *, pipeline, config=None, top_k=None, **callbacks):
        with self.meter.stage("proposals"):
            for done in (4, 8, 12, 16):
                self.meter.progress("proposals", done, 16, "points")
                self.during()
        with self.meter.stage("clip_visual"):
            self.during()
        with self.meter.stage("scoring"):
            self.during()
        return super().predict(image, expressions, pipeline=pipeline, config=config, top_k=top_k, **callbacks)


@pytest.fixture
def job(project, user):
    image = image_make(project, user, width=30, height=20)
    return job_of(expression_make(image, user, "the top band"))


@pytest.mark.django_db
def test_stages_reach_the_job_row_in_order(monkeypatch, job):
    monkeypatch.setattr("workers.tasks.progress.MIN_INTERVAL_S", 0.0)  # every report written
    monkeypatch.setattr("workers.tasks.progress.MIN_ESTIMATE_S", 0.0)  # the fake engine takes no time
    seen: list[dict] = []
    engine = SteppingEngine(during=lambda: seen.append(SegmentationJob.objects.get(pk=job.pk).stage))
    monkeypatch.setattr(engine_access, "engine_get", lambda: engine)
    assert tasks.run_segmentation_job.apply(args=[job.pk]).get() == "succeeded"
    names = [stage["name"] for stage in seen]
    assert names[0] == "proposals" and names[-2:] == ["features", "scoring"]
    points = [stage for stage in seen if stage["name"] == "proposals"]
    assert points[0]["total"] == 16 and points[0]["unit"] == "points"
    assert all("estimate_s" in stage for stage in points)  # from the points' pace
    job.refresh_from_db()
    assert job.state == JobState.SUCCEEDED and job.stage["name"] == "writing"


@pytest.mark.django_db
def test_a_cancel_noticed_at_a_report_stops_the_engine(monkeypatch, job):
    monkeypatch.setattr("workers.tasks.progress.MIN_INTERVAL_S", 0.0)
    reports = {"n": 0}

    def cancel_after_first():
        reports["n"] += 1
        if reports["n"] == 1:
            SegmentationJob.objects.filter(pk=job.pk).update(state=JobState.CANCELLED)

    engine = SteppingEngine(during=cancel_after_first)
    monkeypatch.setattr(engine_access, "engine_get", lambda: engine)
    assert tasks.run_segmentation_job.apply(args=[job.pk]).get() == "cancelled"
    assert reports["n"] == 1  # the next report raised: no more engine work
    job.refresh_from_db()
    assert job.state == JobState.CANCELLED


def test_estimates_from_pace_and_from_history():
    now = {"t": 0.0}
    written: list[tuple[float, dict]] = []
    progress = JobProgress(
        lambda p, stage: written.append((p, dict(stage))) or True,
        history_s={"features": 4.0, "scoring": 1.0},
        min_interval_s=0.0,
        clock=lambda: now["t"],
    )
    progress("proposals", None, None, "")
    now["t"] = 10.0
    progress("proposals", 256, 1024, "points")  # 10 s for a quarter: 30 s left, + 5 s of later stages
    assert written[-1][1]["estimate_s"] == pytest.approx(35.0)
    assert written[-1][0] == pytest.approx(0.1 + 0.6 * 0.25)
    progress("clip_visual", None, None, "")
    assert written[-1][1] == {"name": "features", "estimate_s": 5.0}
    progress("text", None, None, "")  # not a public stage: nothing written
    assert written[-1][1]["name"] == "features"
    now["t"] = 14.6
    progress("scoring", None, None, "")
    assert written[-1][1] == {"name": "scoring", "estimate_s": 1.0}
    now["t"] = 15.0
    progress("scoring", None, None, "")  # 0.6 s left by history: too little to say
    assert written[-1][1] == {"name": "scoring"}
    refusing = JobProgress(lambda p, stage: False)
    with pytest.raises(JobStopped):
        refusing.enter("loading")


def test_waiting_for_another_worker_then_the_full_run_after_early_candidates():
    now = {"t": 0.0}
    written: list[tuple[float, dict]] = []
    progress = JobProgress(
        lambda p, stage: written.append((p, dict(stage))) or True,
        history_s={"proposals": 30.0, "features": 4.0, "scoring": 1.0},
        min_interval_s=0.0,
        clock=lambda: now["t"],
    )
    # The coarse run (early candidates) goes through proposals to scoring.
    progress("proposals", None, None, "")
    progress("scoring", None, None, "")
    progress("waiting", 100, 1000, "points")  # the full run's wait would move back: not written...
    assert written[-1][1]["name"] == "scoring"
    progress.restart()  # ...until the early candidates are stored and the full run starts over
    progress("waiting", 100, 1000, "points")
    assert written[-1][1] == {"name": "waiting", "done": 100, "total": 1000, "unit": "points"}  # no pace yet
    now["t"] = 5.0
    progress("waiting", 200, 1000, "points")  # 100 points in 5 s: 40 s left, + features and scoring
    assert written[-1][1]["estimate_s"] == pytest.approx(45.0)
    progress("proposals", None, None, "")  # found it cached after all: forward, fine
    assert written[-1][1]["name"] == "proposals"


def test_stage_seconds_of_finished_timings():
    timings = {
        "engine": {"stages": {"proposals": {"seconds": 3.0}, "clip_visual": {"seconds": 1.5}, "x": {}}}
    }
    assert stage_seconds(timings) == {"proposals": 3.0, "features": 1.5}
    assert stage_seconds({}) == {}


def test_watchers_hear_stages_and_progress_of_their_thread_only():
    meter = Meter()
    heard: list[tuple] = []
    with meter.watch(lambda *event: heard.append(event)), meter.stage("proposals"):
        meter.progress("proposals", 1, 2, "points")
    with meter.stage("scoring"):
        pass
    assert heard == [("proposals", None, None, ""), ("proposals", 1, 2, "points")]
