"""Click-to-refine: the request is stored, sent by name on commit, answered by the worker task (here run
in-process by a fake task runner with a fake engine), and polled by the page."""

from __future__ import annotations

import numpy as np
import pytest

from server.ris.services.rle import rle_from_mask
from server.web.models import RefineRequest
from tests.server.factories import expression_make, image_make
from tests.web.conftest import job_with_candidates


class FakeEngine:
    """Answers a refine with a square around the first click (records what it was asked)."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.calls: list[dict] = []
        self.fail = fail

    def refine(self, image, *, points_xy, labels, box_xyxy=None, mask_rle=None):
        self.calls.append(
            {
                "shape": image.rgb.shape,
                "sha256": image.sha256,
                "points": points_xy,
                "labels": labels,
                "box": box_xyxy,
                "mask": mask_rle,
            }
        )
        if self.fail:
            raise self.fail
        mask = np.zeros(image.rgb.shape[:2], dtype=bool)
        x, y = (int(v) for v in points_xy[0])
        mask[max(0, y - 3) : y + 3, max(0, x - 3) : x + 3] = True
        return rle_from_mask(mask)


@pytest.fixture
def refine_setup(user, project, monkeypatch):
    """An image with a succeeded job, a fake task runner (records sends) and a fake engine."""
    image = image_make(project, user, name="cat.png", width=40, height=30)
    expression = expression_make(image, user, "the cat")
    job = job_with_candidates(expression)
    sent: list[tuple[str, list]] = []
    monkeypatch.setattr(
        "server.ris.services.dispatch.task_send",
        lambda name, *, args, priority=None, queue=None: sent.append((name, list(args))),
    )
    engine = FakeEngine()
    monkeypatch.setattr("workers.tasks.engine_access.engine_get", lambda: engine)
    return {
        "image": image,
        "expression": expression,
        "candidate": job.candidates.get(rank=0),
        "sent": sent,
        "engine": engine,
    }


def _run_sent(sent):
    """The fake task runner: run each sent task in this process, as a worker would."""
    from workers.tasks.refine import refine_mask

    results = []
    for name, args in sent:
        assert name == "workers.web_tasks.refine_mask"
        results.append(refine_mask.apply(args=args).get())
    sent.clear()
    return results


def test_refine_flow_stores_and_serves_the_mask(web_client, refine_setup, django_capture_on_commit_callbacks):
    image, cand = refine_setup["image"], refine_setup["candidate"]
    start = np.zeros((30, 40), dtype=bool)
    start[0:5, 0:5] = True
    body = {
        "image": image.pk,
        "expression": refine_setup["expression"].pk,
        "candidate": cand.pk,
        "points_xy": [[20.5, 15.0], [2, 2]],
        "labels": [1, 0],
        "mask_rle": rle_from_mask(start),
    }
    with django_capture_on_commit_callbacks(execute=True):
        response = web_client.post("/web/refine/", body, content_type="application/json")
    assert response.status_code == 202, response.content
    request_id = response.json()["id"]
    assert response.json()["state"] == "queued"
    assert refine_setup["sent"] == [("workers.web_tasks.refine_mask", [request_id])]

    poll = web_client.get(f"/web/refine/{request_id}/").json()
    assert poll["state"] == "queued" and poll["rle"] is None

    assert _run_sent(refine_setup["sent"]) == ["succeeded"]
    call = refine_setup["engine"].calls[0]
    assert call["shape"] == (30, 40, 3) and call["sha256"] == image.sha256
    assert call["points"] == [(20.5, 15.0), (2.0, 2.0)] and call["labels"] == [1, 0]
    assert call["mask"]["size"] == [30, 40]

    poll = web_client.get(f"/web/refine/{request_id}/").json()
    assert poll["state"] == "succeeded"
    from pycocotools import mask as mask_utils

    decoded = mask_utils.decode({"size": poll["rle"]["size"], "counts": poll["rle"]["counts"].encode()})
    assert decoded.sum() == poll["area"] == 36
    assert decoded[15, 20] == 1

    # A redelivered message does not run the request again.
    from workers.tasks.refine import refine_mask

    assert refine_mask.apply(args=[request_id]).get() == "skipped"
    assert len(refine_setup["engine"].calls) == 1


def test_refine_engine_error_is_stored_in_words(web_client, refine_setup, django_capture_on_commit_callbacks):
    from workers.engine.core.errors import BadInputError

    refine_setup["engine"].fail = BadInputError("a refine prompt needs at least one point or a box")
    with django_capture_on_commit_callbacks(execute=True):
        response = web_client.post(
            "/web/refine/",
            {"image": refine_setup["image"].pk, "points_xy": [[1, 1]], "labels": [1]},
            content_type="application/json",
        )
    assert _run_sent(refine_setup["sent"]) == ["failed"]
    poll = web_client.get(f"/web/refine/{response.json()['id']}/").json()
    assert poll["state"] == "failed"
    assert poll["error"] == "SAM could not refine the mask: a refine prompt needs at least one point or a box"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"points_xy": [[100, 5]]}, "outside the 40x30 image"),
        ({"labels": [2]}, "must be 1 (add) or 0 (remove)"),
        ({"labels": []}, "1 points but 0 labels"),
        ({"points_xy": [], "labels": []}, "at least one click or a box"),
        ({"box_xyxy": [5, 5, 2, 9]}, "is empty"),
        ({"mask_rle": {"size": [30, 40], "counts": "zz"}}, "mask_rle.counts"),
        ({"image": "x"}, "'image' must be the id"),
    ],
)
def test_refine_rejects_bad_prompts(web_client, refine_setup, change, message):
    body = {"image": refine_setup["image"].pk, "points_xy": [[3, 4]], "labels": [1], **change}
    response = web_client.post("/web/refine/", body, content_type="application/json")
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert not RefineRequest.objects.exists()


def test_refine_candidate_of_another_expression_is_refused(web_client, refine_setup, user):
    other = expression_make(refine_setup["image"], user, "the dog")
    body = {
        "image": refine_setup["image"].pk,
        "expression": other.pk,
        "candidate": refine_setup["candidate"].pk,
        "points_xy": [[3, 4]],
        "labels": [1],
    }
    response = web_client.post("/web/refine/", body, content_type="application/json")
    assert response.status_code == 400
    assert "is not a candidate of expression" in response.json()["error"]


def test_refine_of_another_project_is_not_found(
    refine_setup, other_user, web_client, django_capture_on_commit_callbacks
):
    from django.test import Client

    stranger = Client()
    stranger.force_login(other_user)
    body = {"image": refine_setup["image"].pk, "points_xy": [[3, 4]], "labels": [1]}
    assert stranger.post("/web/refine/", body, content_type="application/json").status_code == 404
    with django_capture_on_commit_callbacks(execute=True):
        mine = web_client.post("/web/refine/", body, content_type="application/json").json()
    assert stranger.get(f"/web/refine/{mine['id']}/").status_code == 404


def test_lost_refine_requests_are_failed_in_words_by_the_reconciler(
    web_client, refine_setup, django_capture_on_commit_callbacks
):
    """A request whose worker died must not leave the page polling forever; a fresh one is left alone."""
    from datetime import timedelta

    from django.utils import timezone

    from workers.tasks.reconcile import reconcile_jobs

    body = {"image": refine_setup["image"].pk, "points_xy": [[10, 10]], "labels": [1]}
    with django_capture_on_commit_callbacks(execute=True):
        old_id = web_client.post("/web/refine/", body, content_type="application/json").json()["id"]
    RefineRequest.objects.filter(pk=old_id).update(
        state="running", created_at=timezone.now() - timedelta(hours=1)
    )
    with django_capture_on_commit_callbacks(execute=True):
        fresh_id = web_client.post("/web/refine/", body, content_type="application/json").json()["id"]
    report = reconcile_jobs.apply().get()
    assert report["refine_requests"]["expired"] == [old_id]
    old = web_client.get(f"/web/refine/{old_id}/").json()
    assert old["state"] == "failed" and "did not answer" in old["error"]
    assert web_client.get(f"/web/refine/{fresh_id}/").json()["state"] == "queued"
