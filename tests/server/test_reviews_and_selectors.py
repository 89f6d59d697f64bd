"""Reviews (decision rules, RLE checks) and selectors (status, search, queue position, membership)."""

from __future__ import annotations

import numpy as np
import pytest

from server.ris import selectors
from server.ris.errors import InvalidInput, ObjectNotFound
from server.ris.models import JobState, Review, SegmentationJob
from server.ris.services import job_claim, job_succeed, review_create
from server.ris.services.rle import rle_counts_decode, rle_from_mask, rle_validate
from tests.server.factories import candidate_dicts, expression_make, image_make, job_of

pytestmark = pytest.mark.django_db


@pytest.fixture
def image(project, user):
    return image_make(project, user)


@pytest.fixture
def answered(image, user):
    """An expression whose job succeeded with three candidates."""
    expression = expression_make(image, user)
    job = job_of(expression)
    job_claim(job_id=job.pk, worker="w")
    job_succeed(job_id=job.pk, candidates=candidate_dicts(image.height, image.width, 3))
    return expression


# -- RLE ---------------------------------------------------------------------------------------------


def test_rle_counts_decode_matches_pycocotools():
    rng = np.random.default_rng(1)
    mask = rng.random((23, 17)) > 0.6
    rle = rle_from_mask(mask)
    runs = rle_counts_decode(rle["counts"])
    assert sum(runs) == 23 * 17
    flat = np.concatenate([np.full(n, i % 2, dtype=bool) for i, n in enumerate(runs)])
    np.testing.assert_array_equal(flat.reshape(17, 23).T, mask)


@pytest.mark.parametrize(
    ("rle", "message"),
    [
        ("nope", "must be an object"),
        ({"size": [3, 4]}, "counts must be a string"),
        ({"size": [30, 40], "counts": "0"}, "but the image is 3x4"),
        ({"size": [3, 4], "counts": "~~~"}, "not an RLE digit"),
        ({"size": [3, 4], "counts": "0o"}, "ends in the middle"),
        ({"size": [3, 4], "counts": "05"}, "covers 5 pixels but the image has 3x4 = 12"),
        ({"size": [3], "counts": "<"}, "must be [height, width]"),
    ],
)
def test_rle_validate_messages(rle, message):
    with pytest.raises(InvalidInput, match=message.replace("[", r"\[").replace("]", r"\]")):
        rle_validate(rle, height=3, width=4)


def test_rle_validate_accepts_a_whole_image_run():
    assert rle_validate({"size": [3, 4], "counts": "<"}, height=3, width=4) == {"size": [3, 4], "counts": "<"}


def test_rle_with_runs_past_the_image_never_reaches_pycocotools():
    huge = rle_from_mask(np.ones((200, 200), dtype=bool))["counts"]
    with pytest.raises(InvalidInput, match="covers 40000 pixels"):
        rle_validate({"size": [3, 4], "counts": huge}, height=3, width=4)


# -- reviews -----------------------------------------------------------------------------------------


def test_accept_a_candidate_of_the_latest_job(answered, user):
    candidate = job_of(answered).candidates.get(rank=1)
    review = review_create(expression=answered, decision="accepted", reviewer=user, candidate_id=candidate.pk)
    assert review.candidate == candidate and review.corrected_rle is None


def test_candidate_of_another_expression_is_refused(answered, image, user):
    other = expression_make(image, user, "other")
    foreign = job_of(answered).candidates.first()
    with pytest.raises(InvalidInput, match="not one of the candidates"):
        review_create(expression=other, decision="accepted", reviewer=user, candidate_id=foreign.pk)


def test_corrected_mask_is_validated_and_stored(answered, image, user):
    mask = np.zeros((image.height, image.width), dtype=bool)
    mask[2:9, 3:20] = True
    review = review_create(expression=answered, decision="corrected", reviewer=user, rle=rle_from_mask(mask))
    assert review.corrected_rle["size"] == [image.height, image.width]
    with pytest.raises(InvalidInput, match="but the image is"):
        review_create(
            expression=answered, decision="corrected", reviewer=user, rle=rle_from_mask(np.ones((5, 5), bool))
        )


@pytest.mark.parametrize(
    ("decision", "with_candidate", "with_rle", "message"),
    [
        ("accepted", False, False, "needs the id of the candidate"),
        ("corrected", False, False, "needs the corrected mask"),
        ("rejected", True, False, "neither a candidate nor a mask"),
        ("maybe", False, False, "decision must be one of"),
    ],
)
def test_review_combinations(answered, user, decision, with_candidate, with_rle, message):
    candidate_id = job_of(answered).candidates.first().pk if with_candidate else None
    with pytest.raises(InvalidInput, match=message):
        review_create(expression=answered, decision=decision, reviewer=user, candidate_id=candidate_id)
    assert Review.objects.count() == 0


# -- selectors ---------------------------------------------------------------------------------------


def test_image_status_follows_expressions_jobs_and_reviews(project, user):
    image_make(project, user, name="bare.png", color=(1, 1, 1))
    waiting = image_make(project, user, name="waiting.png", color=(2, 2, 2))
    expression_make(waiting, user, "a dog")
    reviewing = image_make(project, user, name="reviewing.png", color=(3, 3, 3))
    expression = expression_make(reviewing, user, "a cat")
    SegmentationJob.objects.filter(expression=expression).update(state=JobState.SUCCEEDED)
    finished = image_make(project, user, name="finished.png", color=(4, 4, 4))
    done_expression = expression_make(finished, user, "a bird")
    SegmentationJob.objects.filter(expression=done_expression).update(state=JobState.FAILED)
    review_create(expression=done_expression, decision="rejected", reviewer=user)

    statuses = {i.original_name: i.status for i in selectors.image_list(user=user, project=project)}
    assert statuses == {
        "bare.png": "no_expression",
        "waiting.png": "queued",
        "reviewing.png": "needs_review",
        "finished.png": "done",
    }
    names = [i.original_name for i in selectors.image_list(user=user, project=project, status="needs_review")]
    assert names == ["reviewing.png"]
    assert [i.original_name for i in selectors.image_list(user=user, project=project, q="CAT")] == [
        "reviewing.png"
    ]
    assert [i.original_name for i in selectors.image_list(user=user, project=project, q="bare")] == [
        "bare.png"
    ]
    with pytest.raises(InvalidInput, match="status must be one of"):
        selectors.image_list(user=user, project=project, status="lost")


def test_queue_position_counts_jobs_ahead(image, user):
    jobs = [job_of(expression_make(image, user, f"thing {i}")) for i in range(3)]
    assert [selectors.job_queue_position(job=j, user=user) for j in jobs] == [0, 1, 2]
    job_claim(job_id=jobs[0].pk, worker="w")
    jobs[0].refresh_from_db()
    assert selectors.job_queue_position(job=jobs[0], user=user) is None
    assert selectors.job_queue_position(job=jobs[2], user=user) == 2  # the running one is still ahead


def test_other_projects_objects_are_not_found(answered, image, project, other_user):
    job = job_of(answered)
    with pytest.raises(ObjectNotFound):
        selectors.project_get(user=other_user, project_id=project.pk)
    with pytest.raises(ObjectNotFound):
        selectors.image_get(user=other_user, image_id=image.pk)
    with pytest.raises(ObjectNotFound):
        selectors.expression_get(user=other_user, expression_id=answered.pk)
    with pytest.raises(ObjectNotFound):
        selectors.job_get(user=other_user, job_id=job.pk)
    assert list(selectors.project_list_for_user(user=other_user)) == []


def test_expression_list_carries_latest_job_and_review(answered, image, user):
    review_create(expression=answered, decision="rejected", reviewer=user)
    [listed] = selectors.expression_list(user=user, image=image)
    assert listed.latest_job.state == JobState.SUCCEEDED
    assert listed.latest_review.decision == "rejected"
