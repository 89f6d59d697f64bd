"""LGD's prompts as data: a :class:`PromptSet` read from ``prompts/<name>.json`` beside this module. Torch-free.

``lgd.json`` is the default set and documents itself; its ``version`` is part of every description cache key.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from workers.engine.core.config import config_hash
from workers.engine.core.errors import ConfigError

PROMPT_DIR = Path(__file__).resolve().parent / "prompts"

#: The two prompt kinds of LGD, in the order they are generated.
PROMPT_KINDS: tuple[str, ...] = ("attribute", "surrounding")

#: The placeholders a template may use.
PLACEHOLDERS = frozenset({"expression", "noun_phrase"})

_PROMPT_SET_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,63}$")


def _check_placeholders(template: str, where: str) -> None:
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ConfigError(f"{where}: {template!r} is not a valid template ({exc})") from exc
    unknown = sorted(fields - PLACEHOLDERS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown placeholder {{{unknown[0]}}} in {template!r}; "
            f"use {', '.join('{' + p + '}' for p in sorted(PLACEHOLDERS))}"
        )


@dataclass(frozen=True)
class PromptTemplate:
    """One prompt kind: the user instruction and the assistant's response prefix.

    Attributes:
        kind: ``"attribute"`` or ``"surrounding"``.
        instruction: text with ``{expression}`` / ``{noun_phrase}`` placeholders.
        response_prefix: how every description of this kind starts ("A photo of"); may be empty.
    """

    kind: str
    instruction: str
    response_prefix: str = ""

    def render(self, expression: str, noun_phrase: str) -> str:
        """The instruction with the placeholders filled in."""
        return self.instruction.format(expression=expression, noun_phrase=noun_phrase)

    def fingerprint(self) -> str:
        return config_hash({"instruction": self.instruction, "response_prefix": self.response_prefix})


@dataclass(frozen=True)
class PromptSet:
    """Both prompt kinds, the fallback description, and a version that keys the description cache."""

    name: str
    version: str
    attribute: PromptTemplate
    surrounding: PromptTemplate
    fallback: str = "a photo of {noun_phrase}"

    def template(self, kind: str) -> PromptTemplate:
        if kind not in PROMPT_KINDS:
            raise ConfigError(f"unknown prompt kind {kind!r}; LGD's kinds are {', '.join(PROMPT_KINDS)}")
        return self.attribute if kind == "attribute" else self.surrounding

    def fallback_text(self, expression: str, noun_phrase: str) -> str:
        return self.fallback.format(expression=expression, noun_phrase=noun_phrase or expression)

    @classmethod
    def from_dict(cls, data: Any, *, source: str) -> PromptSet:
        """Build from a JSON object; ``ConfigError`` naming ``source`` and the key at fault otherwise."""
        if not isinstance(data, dict):
            raise ConfigError(f"prompt set {source}: expected a JSON object, got {type(data).__name__}")
        for key in ("name", "version", "attribute", "surrounding"):
            if key not in data:
                raise ConfigError(f"prompt set {source}: missing key {key!r}")
        if not isinstance(data["version"], str) or not data["version"]:
            raise ConfigError(f"prompt set {source}: 'version' must be a non-empty string")
        templates = {}
        for kind in PROMPT_KINDS:
            part = data[kind]
            if (
                not isinstance(part, dict)
                or not isinstance(part.get("instruction"), str)
                or not part["instruction"]
            ):
                raise ConfigError(f"prompt set {source}: {kind!r} needs a non-empty 'instruction' string")
            prefix = part.get("response_prefix", "")
            if not isinstance(prefix, str):
                raise ConfigError(f"prompt set {source}: {kind}.response_prefix must be a string")
            _check_placeholders(part["instruction"], f"prompt set {source}: {kind}.instruction")
            templates[kind] = PromptTemplate(
                kind=kind, instruction=part["instruction"], response_prefix=prefix
            )
        fallback = data.get("fallback", "a photo of {noun_phrase}")
        if not isinstance(fallback, str) or not fallback.strip():
            raise ConfigError(f"prompt set {source}: 'fallback' must be a non-empty string")
        _check_placeholders(fallback, f"prompt set {source}: fallback")
        return cls(
            name=str(data["name"]),
            version=data["version"],
            attribute=templates["attribute"],
            surrounding=templates["surrounding"],
            fallback=fallback,
        )


@lru_cache(maxsize=16)
def load_prompt_set(name: str = "lgd") -> PromptSet:
    """The prompt set ``workers/engine/methods/lgd/prompts/<name>.json`` (names only: a job's config never reads a path)."""
    if not isinstance(name, str) or not _PROMPT_SET_NAME.match(name):
        raise ConfigError(f"prompt set name {name!r} must be lower-case letters, digits, '_' or '-'")
    path = PROMPT_DIR / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in PROMPT_DIR.glob("*.json"))
        raise ConfigError(
            f"prompt set {name!r} not found: no file {path}; known sets are: {', '.join(known)}"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"prompt set file {path} is not valid JSON: {exc}") from exc
    return PromptSet.from_dict(data, source=str(path))
