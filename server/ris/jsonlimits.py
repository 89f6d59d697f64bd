"""JSON with a bounded nesting depth, for every request body and uploaded JSON file.

Python's ``json`` recurses once per nesting level, so a body of ten thousand ``[`` ends in
``RecursionError`` (a 500) before any validation runs. ``check_depth`` measures the depth first, in
linear time and without recursion, and ``loads_bounded`` refuses anything deeper than the limit with a
``JsonTooDeep`` that names it. The limit is ``settings.RIS_MAX_JSON_DEPTH`` (default 32; the deepest
legitimate body, a job config inside an expression, is 4 levels).
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

DEFAULT_MAX_DEPTH = 32

# A JSON string (escapes included); removed before counting so brackets inside text do not count.
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


class JsonTooDeep(ValueError):
    """The document nests arrays/objects deeper than ``limit`` levels."""

    def __init__(self, depth: int, limit: int) -> None:
        super().__init__(f"JSON nested {depth:,} levels deep; the limit is {limit} levels.")
        self.depth = depth
        self.limit = limit


def max_depth_setting() -> int:
    """``settings.RIS_MAX_JSON_DEPTH`` when Django is configured, else ``DEFAULT_MAX_DEPTH``."""
    try:
        from django.conf import settings

        return int(getattr(settings, "RIS_MAX_JSON_DEPTH", DEFAULT_MAX_DEPTH))
    except Exception:  # noqa: BLE001 - settings not configured (a script); the default holds
        return DEFAULT_MAX_DEPTH


def json_depth(text: str) -> int:
    """Deepest nesting of arrays/objects in ``text`` (0 for a scalar); malformed text is measured as is."""
    brackets = _BRACKETS.sub("", _STRING.sub("", text))
    if not brackets:
        return 0
    return max(0, max(accumulate(_STEP[char] for char in brackets)))


def check_depth(text: str, limit: int | None = None) -> None:
    """Raise ``JsonTooDeep`` when ``text`` nests deeper than ``limit`` (default: the setting)."""
    limit = max_depth_setting() if limit is None else limit
    depth = json_depth(text)
    if depth > limit:
        raise JsonTooDeep(depth, limit)


def loads_bounded(text: str | bytes, limit: int | None = None, **kwargs: Any) -> Any:
    """``json.loads(text, **kwargs)`` after ``check_depth``.

    Raises ``JsonTooDeep``, ``json.JSONDecodeError`` or ``UnicodeDecodeError`` (bytes not UTF-8), all
    ``ValueError``s.
    """
    if isinstance(text, bytes | bytearray):
        text = text.decode("utf-8")
    check_depth(text, limit)
    return json.loads(text, **kwargs)
