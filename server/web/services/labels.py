"""Label categories: the project's list of names, and the category of each expression (used by exports)."""

from __future__ import annotations

from typing import Any

from server.ris.errors import InvalidInput
from server.ris.models import Expression, Project

MAX_CATEGORIES = 200
MAX_NAME = 100


def project_categories_set(*, project: Project, names: Any) -> list[str]:
    """Replace ``project``'s categories with ``names`` (a list of strings, or one comma-separated string).

    Names are stripped; empty ones dropped; order kept; duplicates refused. Raises ``InvalidInput``
    naming the problem (not text, too long, repeated, too many).
    """
    if isinstance(names, str):
        names = names.split(",")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InvalidInput("categories must be a list of names, or names separated by commas.")
    cleaned = [n.strip() for n in names if n.strip()]
    if len(cleaned) > MAX_CATEGORIES:
        raise InvalidInput(f"At most {MAX_CATEGORIES} categories; got {len(cleaned)}.")
    for name in cleaned:
        if len(name) > MAX_NAME:
            raise InvalidInput(f"Category {name[:30]!r}… is longer than {MAX_NAME} characters.")
    repeated = sorted({n for n in cleaned if cleaned.count(n) > 1})
    if repeated:
        raise InvalidInput(f"Category names repeat: {', '.join(repeated)}.")
    project.categories = cleaned
    project.save(update_fields=["categories"])
    return cleaned


def expression_category_set(*, expression: Expression, category: Any) -> Expression:
    """Label ``expression`` with one of its project's categories ("" clears it: exported as 'object')."""
    if not isinstance(category, str):
        raise InvalidInput("category must be text.")
    category = category.strip()
    allowed = list(expression.image.project.categories or [])
    if category and category not in allowed:
        choices = ", ".join(allowed) if allowed else "none yet: add them on the project page"
        raise InvalidInput(f"{category!r} is not a category of this project (categories: {choices}).")
    expression.category = category
    expression.save(update_fields=["category"])
    return expression
