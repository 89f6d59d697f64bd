"""TAS's sentence parse as its public code does it: target noun phrase and the ReClip-style entity parse.

Both take the sentence as the code does (lower-cased by the caller) and use the engine's spaCy model
(``workers.engine.blocks.text.get_nlp``; the code loads ``en_core_web_trf``, which is not installable here).

- :func:`target_noun_phrase`: the noun chunk holding the *last* token that is its own head; when that token
  is in no chunk, the chunk of its first child; else the sentence unchanged (not re-joined).
- :func:`entity_parse`: the entity parse the code's spatial rectifier is gated by (``entity_extraction.py``
  with ``heuristics.py``, after ReClip). Noun chunks are first *expanded*: a chunk takes in the tokens
  before it that its tokens govern and that govern no token of another chunk, and the tokens after it that
  its tokens govern, up to the first that governs (or is) a token of another chunk. Then, from the head
  (the *first* token that is its own head; when that fails, the head of the first chunk's root), the
  dependency tree is walked: a token of another chunk that is not a relation keyword starts a relation
  (the tokens on the way, sorted, and that token's own entity), and a leaf ends a chain whose tokens form
  a superlative when one of them is a superlative keyword.

  One property of the code is kept on purpose: the expanded chunks are one span object *per token*, and
  the code compares them by identity, so two tokens count as "the same chunk" only when they are the
  same token. A determiner of the head's own chunk ("the" in "the man") therefore starts a relation to
  an entity with the same text. :class:`EntityParse` records all of this; :meth:`EntityParse.to_dict`
  gives the plain form the parity fixtures hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from workers.engine.methods.tas.vocabulary import (
    CODE_NULL_KEYWORDS,
    CODE_RELATION_KEYWORDS,
    CODE_SUPERLATIVE_KEYWORDS,
)


@dataclass(frozen=True)
class Relation:
    """One relation of an entity: the words on the way (sorted by position) and the related entity."""

    words: tuple[str, ...]
    indices: tuple[int, ...]
    entity: EntityParse | None


@dataclass(frozen=True)
class EntityParse:
    """An entity of the code's parse.

    Attributes:
        head: the text of the head's expanded chunk.
        start, end: that chunk's token span (end exclusive).
        relations: see :class:`Relation`.
        superlatives: word lists holding a superlative keyword, each sorted by position.
    """

    head: str
    start: int
    end: int
    relations: tuple[Relation, ...] = field(default_factory=tuple)
    superlatives: tuple[tuple[str, ...], ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {
            "head": self.head,
            "start": self.start,
            "end": self.end,
            "relations": [
                {
                    "tokens": list(r.words),
                    "indices": list(r.indices),
                    "entity": r.entity.to_dict() if r.entity is not None else None,
                }
                for r in self.relations
            ],
            "superlatives": [list(s) for s in self.superlatives],
        }


@dataclass(frozen=True)
class SentenceParse:
    """:func:`entity_parse`'s answer: the entity (``None`` when the code finds none) and the text of each
    token's expanded chunk (the code's ``chunks`` list, one entry per chunk token)."""

    entity: EntityParse | None
    chunk_texts: tuple[str, ...]


def _nlp() -> Any:
    from workers.engine.blocks.text import get_nlp

    return get_nlp()


def target_noun_phrase(sentence: str, nlp: Any | None = None) -> str:
    """The code's target noun phrase of ``sentence`` (module docstring); ``sentence`` itself as a fallback."""
    doc = (nlp or _nlp())(sentence)
    chunk_of: dict[int, Any] = {}
    for chunk in doc.noun_chunks:
        for i in range(chunk.start, chunk.end):
            chunk_of[i] = chunk
    roots = [t for t in doc if t.head.i == t.i]
    if not roots:
        return sentence
    root = roots[-1]
    if root.i in chunk_of:
        return str(chunk_of[root.i].text)
    children = list(root.children)
    if children and children[0].i in chunk_of:
        return str(chunk_of[children[0].i].text)
    return sentence


def _expanded_chunks(doc: Any) -> dict[int, tuple[int, int]]:
    """Token index -> ``(start, end)`` of its expanded chunk (module docstring)."""
    spans: dict[int, tuple[int, int]] = {}
    for chunk in doc.noun_chunks:
        for i in range(chunk.start, chunk.end):
            spans[i] = (chunk.start, chunk.end)
    expanded: dict[int, tuple[int, int]] = {}
    for key, (c_start, c_end) in spans.items():
        own = range(c_start, c_end)
        others = [spans[k] for k in spans if k != key]
        start, end = c_start, c_end
        for i in range(c_start - 1, -1, -1):
            if any(doc[j].is_ancestor(doc[i]) for j in own) and not any(
                doc[i].is_ancestor(doc[j]) for s, e in others for j in range(s, e)
            ):
                start = i
        for i in range(c_end, len(doc)):
            if any(doc[j].is_ancestor(doc[i]) for j in own):
                if not any(doc[i].is_ancestor(doc[j]) or i == j for s, e in others for j in range(s, e)):
                    end = i + 1
                else:
                    break
        expanded[key] = (start, end)
    return expanded


class _Walker:
    def __init__(self, doc: Any, chunks: dict[int, tuple[int, int]]) -> None:
        self.doc = doc
        self.chunks = chunks
        self.relation_words = {w for words in CODE_RELATION_KEYWORDS for w in words}
        self.superlative_words = {w for words in CODE_SUPERLATIVE_KEYWORDS for w in words}
        self.null_words = set(CODE_NULL_KEYWORDS)

    def superlatives(self, tokens: list[Any]) -> list[list[Any]]:
        if any(t.text in self.superlative_words for t in tokens):
            tokens.sort(key=lambda t: t.i)  # in place, as the code (the list may be shared)
            return [tokens]
        return []

    def entity(self, head: Any) -> EntityParse | None:
        if head.i not in self.chunks:
            children = list(head.children)
            if children and children[0].i in self.chunks:
                head = children[0]
            else:
                return None
        relations, superlatives = self.walk(head, head, [])
        start, end = self.chunks[head.i]
        return EntityParse(
            head=self.doc[start:end].text,
            start=start,
            end=end,
            relations=tuple(
                Relation(tuple(t.text for t in ts), tuple(t.i for t in ts), sub) for ts, sub in relations
            ),
            superlatives=tuple(tuple(t.text for t in ts) for ts in superlatives),
        )

    def walk(self, token: Any, head: Any, tokens: list[Any]) -> tuple[list, list]:
        keyword = token.text in self.relation_words or token.text in self.null_words
        # "Another chunk" is another token of a chunk: the code compares per-token spans by identity.
        if token.i in self.chunks and token.i != head.i and not keyword:
            tokens.sort(key=lambda t: t.i)
            return [(tokens, self.entity(token))], []
        children = list(token.children)
        if not children:
            return [], self.superlatives([*tokens, token])
        relations: list = []
        superlatives: list = []
        keyword = keyword or token.text in self.superlative_words
        for child in children:
            passed = [*tokens, token] if token.i not in self.chunks or keyword else tokens
            sub_relations, sub_superlatives = self.walk(child, head, passed)
            relations.extend(sub_relations)
            superlatives.extend(sub_superlatives)
        return relations, superlatives


def entity_parse(sentence: str, nlp: Any | None = None) -> SentenceParse:
    """The code's entity parse of ``sentence`` (module docstring)."""
    doc = (nlp or _nlp())(sentence)
    chunks = _expanded_chunks(doc)
    walker = _Walker(doc, chunks)
    head = next((t for t in doc if t.head.i == t.i), None)
    entity = walker.entity(head) if head is not None else None
    noun_chunks = list(doc.noun_chunks)
    if entity is None and noun_chunks:
        entity = walker.entity(noun_chunks[0].root.head)
    texts = tuple(doc[s:e].text for s, e in chunks.values())
    return SentenceParse(entity, texts)


def relation_heads(entity: EntityParse) -> Sequence[str]:
    """The head texts of an entity's related entities (``""`` for a relation to no entity)."""
    return [r.entity.head if r.entity is not None else "" for r in entity.relations]
