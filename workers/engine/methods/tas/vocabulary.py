"""TAS's direction words: the public code's lists, ours, and the check of a vocabulary given in a config.

Torch-free (configs import it). See ``workers.engine.methods.tas.spatial`` for how the words are matched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

DIRECTIONS: tuple[str, ...] = ("left", "right", "top", "bottom")
MATCH_CHOICES: tuple[str, ...] = ("word", "substring")

#: The public code's word lists (its relation and superlative keyword lists, merged per direction).
TAS_CODE_VOCABULARY: dict[str, tuple[str, ...]] = {
    "left": ("left", "west", "leftmost", "western"),
    "right": ("right", "east", "rightmost", "eastern"),
    "top": ("above", "top", "north"),
    "bottom": ("below", "south", "under", "underneath"),
}

#: Ours: the code's words plus the direction words RefCOCO uses that the code misses.
DEFAULT_VOCABULARY: dict[str, tuple[str, ...]] = {
    "left": ("left", "west", "leftmost", "western", "lefthand"),
    "right": ("right", "east", "rightmost", "eastern", "righthand"),
    "top": ("top", "above", "north", "topmost", "upper", "uppermost", "highest"),
    "bottom": ("bottom", "below", "south", "under", "underneath", "beneath", "lower", "lowest", "bottommost"),
}


def check_vocabulary(vocabulary: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
    """A clean copy of a direction -> words mapping; ``ValueError`` naming a bad direction or word."""
    unknown = sorted(set(vocabulary) - set(DIRECTIONS))
    if unknown:
        raise ValueError(
            f"spatial vocabulary has unknown direction {unknown[0]!r}; directions are {DIRECTIONS}"
        )
    clean: dict[str, tuple[str, ...]] = {}
    for direction in DIRECTIONS:
        words = vocabulary.get(direction, ())
        if isinstance(words, str) or not all(isinstance(w, str) and w.strip() for w in words):
            raise ValueError(
                f"spatial vocabulary {direction!r} must be a list of non-empty words, got {words!r}"
            )
        clean[direction] = tuple(w.strip().lower() for w in words)
    return clean


# The public code's entity-parse keywords (its ``heuristics.py``, after ReClip): relation words, superlative
# words and "null" words, per relation. Used by ``workers.engine.methods.tas.parse`` and the code's rectifier
# rule in ``workers.engine.methods.tas.rectifier``.
CODE_RELATION_KEYWORDS: tuple[tuple[str, ...], ...] = (
    ("left", "west"),
    ("right", "east"),
    ("above", "north", "top"),
    ("below", "south", "under"),
    ("bigger", "larger", "closer"),
    ("smaller", "tinier", "further"),
    ("inside", "within", "contained"),
)
CODE_SUPERLATIVE_KEYWORDS: tuple[tuple[str, ...], ...] = (
    ("left", "west", "leftmost", "western"),
    ("right", "rightmost", "east", "eastern"),
    ("above", "north", "top"),
    ("below", "south", "underneath"),
    ("bigger", "biggest", "larger", "largest", "closer", "closest"),
    ("smaller", "smallest", "tinier", "tiniest", "further", "furthest"),
)
CODE_NULL_KEYWORDS: tuple[str, ...] = ("part", "image", "side", "picture", "half", "region", "section")
