"""Writes on projects and their members."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from server.ris.errors import InvalidInput, ObjectNotFound
from server.ris.models import Project

PROJECT_NAME_MAX = 200


@transaction.atomic
def project_create(*, name: str, created_by: AbstractBaseUser) -> Project:
    """Create a project; its creator becomes its first member."""
    name = (name or "").strip()
    if not name:
        raise InvalidInput("A project needs a name; the name given is empty.")
    if len(name) > PROJECT_NAME_MAX:
        raise InvalidInput(f"A project name may be at most {PROJECT_NAME_MAX} characters; got {len(name)}.")
    project = Project.objects.create(name=name, created_by=created_by)
    project.members.add(created_by)
    return project


def project_member_add(*, project: Project, username: str) -> AbstractBaseUser:
    """Add the user named ``username`` to the project's members (a no-op if already a member)."""
    user_model = get_user_model()
    try:
        user = user_model.objects.get(**{user_model.USERNAME_FIELD: username})
    except user_model.DoesNotExist:
        raise ObjectNotFound(f"There is no user named {username!r}.") from None
    project.members.add(user)
    return user
