"""The MLLM's two prompts of grounded SAM 3 and the parsing of its answers. Pure Python (no torch).

1. *Noun phrase*: the referring expression in, a short noun phrase naming the object's category out
   ("the man in the red shirt on the left" -> "man"), which SAM 3 segments every instance of.
   :func:`parse_noun_phrase` keeps the first line, drops quotes, a leading "noun phrase:" label and final
   punctuation, and gives up (``None``) on an empty or over-long answer or one that is not words (letters,
   spaces, hyphens, apostrophes); the caller then uses spaCy's noun phrase.
2. *Selection*: the image with each instance's number drawn on its box, the boxes listed as
   ``n: [x0, y0, x1, y1]`` pixels, and the expression; the answer is asked as JSON
   ``{"order": [numbers, best first], "reason": "..."}`` with ``"order": []`` when none matches.
   :func:`parse_selection` reads the first JSON object in the answer, else the numbers after the last
   "order"/"answer" label, else every number in it; numbers outside 1..N are dropped (``invalid``),
   repeats are dropped, and an answer with no usable order is ``malformed`` (then the caller keeps SAM 3's
   own order). "None of them" (an empty JSON order) is ``none_found``.

``PROMPT_VERSION`` is part of every cached answer's key: change it with the wording.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

PROMPT_VERSION = "grounded_sam3-1"

NOUN_PHRASE_PROMPT = (
    'A referring expression describes one object in this image: "{expression}". '
    "Answer with the short noun phrase naming the kind of object it refers to (one to three words, "
    'for example "man", "red car", "dog"), and nothing else.'
)

SELECTION_PROMPT = (
    'Referring expression: "{expression}".\n'
    "The image shows {n} candidate objects, each marked by its number on its box. Boxes as "
    "[x0, y0, x1, y1] in pixels of the {width}x{height} image:\n{boxes}\n"
    "Which candidates does the expression refer to? Answer with JSON only: "
    '{{"order": [candidate numbers, best match first], "reason": "one short sentence"}}. '
    'If none of them matches, answer {{"order": [], "reason": "..."}}.'
)

_MAX_PHRASE_WORDS = 6
_LABEL = re.compile(r"^\s*(noun phrase|answer|object|phrase)\s*[:\-]\s*", re.IGNORECASE)
_QUOTES = "\"'`\u201c\u201d\u2018\u2019"
_INT = re.compile(r"-?\d+")
_WORDS = re.compile(r"[a-z][a-z'\- ]*")


def noun_phrase_prompt(expression: str) -> str:
    """The noun-phrase prompt of ``expression`` (whitespace collapsed)."""
    return NOUN_PHRASE_PROMPT.format(expression=" ".join(expression.split()))


def parse_noun_phrase(answer: str) -> str | None:
    """The noun phrase in an MLLM answer, lower-cased; ``None`` when there is none usable."""
    lines = [line for line in str(answer).splitlines() if line.strip()]
    if not lines:
        return None
    text = _LABEL.sub("", lines[0]).strip().strip(_QUOTES + " ").rstrip(".!?,;:").strip(_QUOTES + " ")
    text = " ".join(text.split()).lower()
    if not _WORDS.fullmatch(text) or len(text.split()) > _MAX_PHRASE_WORDS:
        return None
    return text


def format_box(box: Sequence[float]) -> str:
    """``[x0, y0, x1, y1]`` rounded to whole pixels."""
    return "[" + ", ".join(str(int(round(float(v)))) for v in box) + "]"


def selection_prompt(expression: str, boxes: Sequence[Sequence[float]], image_size: tuple[int, int]) -> str:
    """The selection prompt: ``boxes`` are the instances' ``xyxy`` pixel boxes, numbered from 1; ``image_size``
    is ``(H, W)``."""
    listed = "\n".join(f"{i}: {format_box(box)}" for i, box in enumerate(boxes, start=1))
    return SELECTION_PROMPT.format(
        expression=" ".join(expression.split()),
        n=len(boxes),
        width=int(image_size[1]),
        height=int(image_size[0]),
        boxes=listed,
    )


@dataclass(frozen=True)
class Selection:
    """The MLLM's choice among ``n`` instances.

    Attributes:
        order: 0-based instance indices, best first, each in ``0..n-1`` and once.
        reason: the model's reason ("" when it gave none).
        invalid: numbers the model gave that are not instances (outside ``1..n``), as given.
        malformed: no usable order could be read (the caller keeps SAM 3's order).
        none_found: the model said that no instance matches (an empty JSON ``order``).
        raw: the answer as decoded.
    """

    order: tuple[int, ...]
    reason: str = ""
    invalid: tuple[int, ...] = field(default_factory=tuple)
    malformed: bool = False
    none_found: bool = False
    raw: str = ""

    def to_state(self) -> dict[str, Any]:
        return {
            "order": list(self.order),
            "reason": self.reason,
            "invalid": list(self.invalid),
            "malformed": self.malformed,
            "none_found": self.none_found,
            "raw": self.raw,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Selection:
        return cls(
            order=tuple(int(i) for i in state["order"]),
            reason=str(state["reason"]),
            invalid=tuple(int(i) for i in state["invalid"]),
            malformed=bool(state["malformed"]),
            none_found=bool(state["none_found"]),
            raw=str(state["raw"]),
        )


def _first_json_object(text: str) -> dict[str, Any] | None:
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            value, _ = decoder.raw_decode(text[match.start() :])
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _numbers(values: Any) -> list[int] | None:
    if isinstance(values, bool):
        return None
    if isinstance(values, int | float):
        return [int(values)] if float(values).is_integer() else None
    if isinstance(values, str):
        return [int(v) for v in _INT.findall(values)]
    if isinstance(values, list):
        out = []
        for v in values:
            got = _numbers(v)
            if got is None:
                return None
            out.extend(got)
        return out
    return None


def parse_selection(answer: str, n: int) -> Selection:
    """The selection in an MLLM answer about ``n`` instances (see the module docstring)."""
    raw = str(answer)
    reason = ""
    numbers: list[int] | None = None
    none_found = False
    found = _first_json_object(raw)
    if found is not None:
        reason = " ".join(str(found.get("reason", "") or "").split())
        for key in ("order", "answer", "ids", "candidates", "selected"):
            if key in found:
                numbers = _numbers(found[key])
                if numbers is None:  # a JSON order that is not numbers: unusable, not re-read as text
                    numbers = []
                break
        if numbers == [] and found.get("order") == []:
            none_found = True
    if numbers is None:
        labelled = re.split(r"(?i)\b(?:order|answer|candidates?)\b\s*[:=]?", raw)
        tail = labelled[-1] if len(labelled) > 1 else raw
        numbers = [int(v) for v in _INT.findall(tail)]
        if not numbers and re.search(r"(?i)\bnone\b|\bno (?:candidate|object|match)", raw):
            none_found = True
    order: list[int] = []
    invalid: list[int] = []
    for number in numbers:
        if not 1 <= number <= n:
            invalid.append(number)
        elif number - 1 not in order:
            order.append(number - 1)
    malformed = not order and not none_found
    return Selection(
        order=tuple(order),
        reason=reason,
        invalid=tuple(invalid),
        malformed=malformed,
        none_found=none_found,
        raw=raw,
    )
