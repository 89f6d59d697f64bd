"""Every pointer to the method notes in code, reports and docs names ``docs/METHODS.md`` and a heading it has."""

from __future__ import annotations

import re
from pathlib import Path

from workers.engine.core.settings import PROJECT_ROOT

NOTES = PROJECT_ROOT / "docs" / "METHODS.md"
SOURCES = ("server", "workers", "frontend", "scripts", "docs", "README.md")


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    return {
        re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        for m in re.finditer(r"^#+ (.+)$", markdown, flags=re.MULTILINE)
    }


def _files() -> list[Path]:
    found: list[Path] = []
    for name in SOURCES:
        path = PROJECT_ROOT / name
        found += (
            [path]
            if path.is_file()
            else [p for p in path.rglob("*") if p.suffix in {".py", ".md", ".html", ".sh", ".json"}]
        )
    return found


def test_every_method_notes_reference_resolves() -> None:
    anchors = _anchors(NOTES.read_text(encoding="utf-8"))
    refs: list[tuple[Path, str, str]] = []
    for path in _files():
        for m in re.finditer(
            r"(\S*)METHODS\.md(#[\w-]+)?", path.read_text(encoding="utf-8", errors="replace")
        ):
            refs.append((path, m.group(1), (m.group(2) or "")[1:]))
    assert len(refs) > 10  # the pipelines' docstrings point at their sections
    wrong_path = [
        (p, prefix)
        for p, prefix, _ in refs
        if p != NOTES and not prefix.endswith("docs/") and not (p.name == "README.md" and prefix == "")
    ]
    assert not wrong_path, f"references not to docs/METHODS.md: {wrong_path}"
    broken = [(str(p.relative_to(PROJECT_ROOT)), a) for p, _, a in refs if a and a not in anchors]
    assert not broken, f"anchors docs/METHODS.md lacks: {broken}"
