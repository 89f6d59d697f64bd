"""TAS's spatial rectifier as the public code decides it: gated by its entity parse (docs/METHODS.md#tas).

:func:`code_rectify` takes the masks' weights and centroids (quadrants as in
``workers.engine.methods.tas.spatial``), the sentence (lower-cased inside), the code's entity parse
(``workers.engine.methods.tas.parse.entity_parse``) and the target noun phrase
(``parse.target_noun_phrase``), and returns the code's choice:

1. Gate: the parse has an entity whose head text *equals* the target noun phrase. The head is the
   *expanded* chunk, so "man on the left" (head "man on the left", phrase "man") fails, and so does a
   sentence ending in punctuation ("top right cup." vs "top right cup").
2. Superlatives and no relations: the sentence's substrings decide. "above"/"top"/"north": with
   "left"/"west" the top-left best, with "right"/"east" the top-right best, else the better of the two top
   quadrants; "below"/"south"/"underneath" (not "under"): likewise at the bottom; else "left"/"west": the
   better of the two left quadrants, "right"/"east": of the two right ones; else no change.
3. Relations and no superlatives: for each relation with words whose entity's head is one of the chunk
   texts, the first word that is a relation keyword (left/west, right/east, above/north/top,
   below/south/under, matched as whole words) acts when the related entity's head equals the entity's own
   head or contains that word, using the other axis's words of the sentence (vertical: "under" counts
   here); later relations may override earlier ones. A relation to no entity fails as the code does
   (``AttributeError``), reported here as :class:`RectifierError`.
4. Both or neither: no change.

"Better of two quadrants": the second wins unless the first's best weight is strictly greater; an empty
quadrant weighs 0 and stands for the choice before rectification.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from workers.engine.core.errors import EngineError
from workers.engine.methods.tas.parse import SentenceParse
from workers.engine.methods.tas.spatial import BOTTOM_LEFT, BOTTOM_RIGHT, TOP_LEFT, TOP_RIGHT, quadrants

_TOP = ("above", "top", "north")
_LEFT = ("left", "west")
_RIGHT = ("right", "east")
_SUPERLATIVE_BOTTOM = ("below", "south", "underneath")
_RELATION_BOTTOM = ("below", "south", "under")
_RELATION_WORDS = {
    "left": ("left", "west"),
    "right": ("right", "east"),
    "top": ("above", "north", "top"),
    "bottom": ("below", "south", "under"),
}


class RectifierError(EngineError):
    """The code's rectifier fails on this parse (a relation to no entity)."""


@dataclass(frozen=True)
class CodeRectified:
    """The code's rectifier answer.

    Attributes:
        index: the chosen mask.
        gate: the entity head equals the target noun phrase.
        branch: ``"superlative"``, ``"relation"`` or ``""`` (no branch ran).
    """

    index: int
    gate: bool
    branch: str


def _has(text: str, words: Sequence[str]) -> bool:
    return any(w in text for w in words)


def code_rectify(
    sentence: str,
    parse: SentenceParse,
    noun_phrase: str,
    weights: np.ndarray,
    centroids: np.ndarray,
    current: int,
) -> CodeRectified:
    """The code's choice (module docstring). ``weights``: ``N`` scores; ``centroids``: ``N x 2`` (row, col).

    Raises:
        RectifierError: where the code raises (a relation whose entity the parse could not build).
    """
    weights = np.asarray(weights).reshape(-1)
    parts = quadrants(centroids)
    best_weight = [0.0, 0.0, 0.0, 0.0]
    best_index = [int(current)] * 4
    for q in range(4):
        members = np.flatnonzero(parts == q)
        if members.size:
            top = int(members[0])
            for m in members[1:]:  # the first maximum, as Python's max()
                if weights[m] > weights[top]:
                    top = int(m)
            best_weight[q], best_index[q] = weights[top], top

    def better(first: int, second: int) -> int:
        return best_index[first] if best_weight[first] > best_weight[second] else best_index[second]

    text = sentence.lower()
    entity = parse.entity
    if entity is None or entity.head != noun_phrase:
        return CodeRectified(int(current), False, "")
    if entity.superlatives and not entity.relations:
        if _has(text, _TOP):
            if _has(text, _LEFT):
                index = best_index[TOP_LEFT]
            elif _has(text, _RIGHT):
                index = best_index[TOP_RIGHT]
            else:
                index = better(TOP_LEFT, TOP_RIGHT)
        elif _has(text, _SUPERLATIVE_BOTTOM):
            if _has(text, _LEFT):
                index = best_index[BOTTOM_LEFT]
            elif _has(text, _RIGHT):
                index = best_index[BOTTOM_RIGHT]
            else:
                index = better(BOTTOM_LEFT, BOTTOM_RIGHT)
        elif _has(text, _LEFT):
            index = better(TOP_LEFT, BOTTOM_LEFT)
        elif _has(text, _RIGHT):
            index = better(TOP_RIGHT, BOTTOM_RIGHT)
        else:
            index = int(current)
        return CodeRectified(int(index), True, "superlative")
    if entity.relations and not entity.superlatives:
        index = int(current)
        for relation in entity.relations:
            if not relation.words:
                continue
            if relation.entity is None:
                raise RectifierError(f"the code fails on {sentence!r}: a relation to no entity")
            other = relation.entity.head
            if other not in parse.chunk_texts:
                continue
            for word in relation.words:
                side = next((s for s, words in _RELATION_WORDS.items() if word in words), None)
                if side is None:
                    continue
                if other == entity.head or word in other:
                    index = _relation_choice(side, text, best_index, better)
                break
        return CodeRectified(int(index), True, "relation")
    return CodeRectified(int(current), True, "")


def _relation_choice(side: str, text: str, best_index: list[int], better) -> int:  # noqa: ANN001
    if side in ("left", "right"):
        top, bottom = (TOP_LEFT, BOTTOM_LEFT) if side == "left" else (TOP_RIGHT, BOTTOM_RIGHT)
        if _has(text, _TOP):
            return best_index[top]
        if _has(text, _RELATION_BOTTOM):
            return best_index[bottom]
        return better(top, bottom)
    left, right = (TOP_LEFT, TOP_RIGHT) if side == "top" else (BOTTOM_LEFT, BOTTOM_RIGHT)
    if _has(text, _LEFT):
        return best_index[left]
    if _has(text, _RIGHT):
        return best_index[right]
    return better(left, right)
