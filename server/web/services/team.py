"""Team work: images assigned to annotators, and the review stage (a second person approves a review
or sends it back). Every check also appends a line to the expression's activity."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction

from server.ris.errors import Conflict, InvalidInput
from server.ris.models import Activity, CheckVerdict, Image, Project, Review, ReviewCheck


def _member(project: Project, username: Any):
    if not isinstance(username, str) or not username.strip():
        raise InvalidInput("Name the member by username.")
    user = get_user_model().objects.filter(username=username.strip()).first()
    if user is None or not (project.members.filter(pk=user.pk).exists() or project.created_by_id == user.pk):
        raise InvalidInput(f"{username!r} is not a member of this project.")
    return user


def images_assign(*, project: Project, usernames: Any, only_unassigned: bool = True) -> dict[str, int]:
    """Share ``project``'s images among the members named in ``usernames`` (round robin, by image id).

    ``only_unassigned``: leave images that already have an annotator. An empty list clears the
    assignment of those images. Returns how many images each member now got. ``InvalidInput`` for a
    name that is not a member.
    """
    if not isinstance(usernames, list):
        raise InvalidInput("usernames must be a list of member usernames.")
    users = [_member(project, name) for name in usernames]
    images = Image.objects.filter(project=project).order_by("id")
    if only_unassigned:
        images = images.filter(assignee__isnull=True)
    counts = {u.get_username(): 0 for u in users}
    with transaction.atomic():
        for k, image in enumerate(images.select_for_update()):
            user = users[k % len(users)] if users else None
            Image.objects.filter(pk=image.pk).update(assignee=user)
            if user is not None:
                counts[user.get_username()] += 1
    return counts


def review_check(*, review: Review, checker: Any, verdict: str, note: str = "") -> ReviewCheck:
    """Approve ``review`` or send it back (``verdict``), as a person other than its reviewer.

    Raises ``InvalidInput`` for an unknown verdict or an over-long note, ``Conflict`` when the checker made
    the review or a newer review of the expression exists.
    """
    if verdict not in CheckVerdict.values:
        raise InvalidInput(f"verdict must be one of {', '.join(CheckVerdict.values)}; got {verdict!r}.")
    if not isinstance(note, str) or len(note) > 500:
        raise InvalidInput("note must be text of at most 500 characters.")
    if review.reviewer_id is not None and review.reviewer_id == checker.pk:
        raise Conflict("The review stage needs a second person: you made this decision yourself.")
    latest = Review.objects.filter(expression_id=review.expression_id).order_by("-created_at", "-id").first()
    if latest is None or latest.pk != review.pk:
        raise Conflict("A newer decision exists on this expression; check that one.")
    with transaction.atomic():
        check = ReviewCheck.objects.create(review=review, checker=checker, verdict=verdict, note=note.strip())
        Activity.objects.create(
            expression_id=review.expression_id,
            actor=checker,
            verb=verdict,
            review_id=review.pk,
            detail=note.strip()[:300],
        )
    return check
