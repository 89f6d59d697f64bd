"""WordNet for TAS's negative phrases: near-synonyms of the target noun (docs/METHODS.md#tas-negative-phrases).

Where WordNet comes from
    Debian's ``wordnet-base`` package installs the WordNet 3.0 database in ``/usr/share/wordnet``
    (``scripts/ensure-wordnet.sh`` installs it). nltk's ``WordNetCorpusReader`` reads that database, with two
    conditions: a ``lexnames`` file beside the data (the Debian package documents the 45 lexicographer
    files only in lexnames(5WN); :data:`LEXNAMES` holds them, fixed since WordNet 3.0), and a folder inside
    one of nltk's data roots (nltk refuses paths outside them, and refuses symbolic links that leave the
    folder, and hard links too). :func:`build_wordnet_corpus` therefore lays the database out as
    ``<nltk data>/corpora/wordnet/`` (copies of the Debian files, about 28 MB, plus the ``lexnames`` file
    written here), and :func:`load_wordnet` puts ``<nltk data>`` on
    ``nltk.data.path`` and opens a reader on that folder. ``<nltk data>`` is ``$RIS_NLTK_DATA``, else
    ``$RIS_VAR_DIR/nltk_data``, else ``var/nltk_data`` of the project. No PyPI package ships the WordNet
    database in a form nltk reads (checked: ``nltkdata``, ``wordnet-lookup``; ``wn`` downloads its data at
    run time), so the Debian package is the source.

    A WordNet that nltk already finds in its usual places (``nltk.download("wordnet")`` on a machine with
    network) is used when the project folder cannot be built.

    ``python -m workers.engine.methods.tas.lexicon ensure`` builds the folder (the script calls it) and prints where.

Near-synonyms
    :func:`near_synonyms` counts the pairs of WordNet senses of two nouns whose path similarity exceeds
    ``min_path_similarity`` (TAS's code: 0.9, which only the same sense reaches) and calls the nouns
    near-synonyms when there are at least ``min_shared_senses`` (TAS: 3). The public code thereby treats a
    word with fewer than three senses ("giraffe") as no near-synonym of itself, so the target's own chunk
    becomes a negative phrase; ``same_lemma=True`` (our default) counts equal lemmas as near-synonyms.
    TAS looks at every part of speech of the two words; ``nouns_only=True`` (our default) at noun senses.
    :func:`phrase_noun` picks the noun of a phrase: its syntactic head (ours) or its first noun (TAS's
    ``nltk.pos_tag`` on the phrase, here with spaCy's tagger, since nltk's tagger data is not installed).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.engine.core.errors import EngineError
from workers.engine.core.settings import project_path, var_dir
from workers.engine.methods.tas.config import SynonymRule

log = logging.getLogger(__name__)

#: Where Debian's ``wordnet-base`` installs WordNet 3.0.
DEBIAN_WORDNET_DIR = Path("/usr/share/wordnet")

#: The database files nltk's reader opens (all in Debian's ``wordnet-base``). ``index.sense`` is not among
#: them: nltk reads it only to map other WordNet versions for the multilingual functions, which
#: :class:`_EnglishWordNetReader` switches off.
WORDNET_FILES: tuple[str, ...] = (
    "adj.exc",
    "adv.exc",
    "noun.exc",
    "verb.exc",
    "cntlist.rev",
    "data.adj",
    "data.adv",
    "data.noun",
    "data.verb",
    "index.adj",
    "index.adv",
    "index.noun",
    "index.verb",
)

#: WordNet 3.0's lexicographer files in file-number order (lexnames(5WN)); the number is the position.
LEXNAMES: tuple[str, ...] = (
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
)

#: The syntactic category number of each lexicographer file's part of speech (1 noun, 2 verb, 3 adj, 4 adv).
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}

INSTALL_HINT = (
    "install WordNet with `scripts/ensure-wordnet.sh` (Debian package wordnet-base, then "
    "`python -m workers.engine.methods.tas.lexicon ensure`), or set the TAS config key lexicon_fallback to 'exact' "
    "to compare nouns by lemma only"
)


class WordNetMissingError(EngineError):
    """WordNet is not installed where the engine looks; the message says how to install it."""


# ---------------------------------------------------------------------------------------------------
# The corpus folder
# ---------------------------------------------------------------------------------------------------


def nltk_data_dir() -> Path:
    """The project's nltk data root: ``$RIS_NLTK_DATA``, ``$RIS_VAR_DIR/nltk_data`` or ``<project>/var/nltk_data``.

    Relative paths are taken from the project root, as the engine's other ``RIS_*`` paths.
    """
    explicit = os.environ.get("RIS_NLTK_DATA")
    if explicit:
        return project_path(explicit).resolve()
    return (var_dir() / "nltk_data").resolve()


def lexnames_text() -> str:
    """The ``lexnames`` file nltk expects: ``NN<TAB>name<TAB>category`` per line."""
    lines = [f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}" for i, name in enumerate(LEXNAMES)]
    return "\n".join(lines) + "\n"


def _place(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` through a temporary file; an up-to-date plain ``target`` is kept.

    A copy, not a link: nltk refuses symbolic links leaving its root and files with several hard links.
    """
    plain = target.is_file() and not target.is_symlink() and target.stat().st_nlink == 1
    if plain and target.stat().st_size == source.stat().st_size:
        return
    if target.exists() or target.is_symlink():
        target.unlink()
    temporary = target.with_name(
        f"{target.name}.{os.getpid()}-{threading.get_ident()}.part"
    )  # one per writer
    shutil.copyfile(source, temporary)
    temporary.replace(target)


def build_wordnet_corpus(source: Path | str = DEBIAN_WORDNET_DIR, data_dir: Path | str | None = None) -> Path:
    """Lay WordNet out for nltk under ``data_dir/corpora/wordnet`` and return that folder (idempotent).

    Args:
        source: a WordNet 3.0 database folder (Debian's ``/usr/share/wordnet``).
        data_dir: the nltk data root (default :func:`nltk_data_dir`).

    Raises:
        WordNetMissingError: ``source`` lacks a database file.
    """
    source = Path(source)
    missing = [name for name in WORDNET_FILES if not (source / name).is_file()]
    if missing:
        raise WordNetMissingError(
            f"WordNet database not found: {source / missing[0]} is missing; {INSTALL_HINT}"
        )
    root = Path(data_dir) if data_dir is not None else nltk_data_dir()
    folder = root / "corpora" / "wordnet"
    folder.mkdir(parents=True, exist_ok=True)
    for name in WORDNET_FILES:
        _place(source / name, folder / name)
    lexnames = folder / "lexnames"
    text = lexnames_text()
    if not lexnames.is_file() or lexnames.read_text(encoding="ascii") != text:
        temporary = folder / f"lexnames.{os.getpid()}-{threading.get_ident()}.part"
        temporary.write_text(text, encoding="ascii")
        temporary.replace(lexnames)
    return folder


def _is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in (*WORDNET_FILES, "lexnames"))


_LOCK = threading.Lock()
_READERS: dict[str, Any] = {}


def load_wordnet(data_dir: Path | str | None = None, *, source: Path | str = DEBIAN_WORDNET_DIR) -> Any:
    """A process-wide nltk ``WordNetCorpusReader``; builds the project folder from ``source`` when needed.

    Order: the project folder (brought up to date from ``source`` when ``source`` exists), then a WordNet
    nltk finds on its own data path.

    Raises:
        WordNetMissingError: no WordNet anywhere; the message names the fix.
    """
    root = Path(data_dir) if data_dir is not None else nltk_data_dir()
    key = str(root)
    with _LOCK:
        reader = _READERS.get(key)
        if reader is not None:
            return reader
        import nltk

        folder = root / "corpora" / "wordnet"
        if Path(source, "data.noun").is_file():  # idempotent: checks sizes, re-copies what changed
            try:
                build_wordnet_corpus(source, root)
            except OSError as exc:
                log.warning("could not lay out WordNet in %s: %s", folder, exc)
        if _is_complete(folder):
            if str(root) not in [str(p) for p in nltk.data.path]:
                nltk.data.path.insert(0, str(root))
            reader = _open_reader(str(folder))
        else:
            try:
                found = nltk.data.find("corpora/wordnet")
            except LookupError:
                found = None
            if found is None:
                raise WordNetMissingError(
                    f"WordNet is not installed (looked in {folder} and {source}); {INSTALL_HINT}"
                )
            reader = _open_reader(found)
        _READERS[key] = reader
        return reader


def _open_reader(root: Any) -> Any:
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class _EnglishWordNetReader(WordNetCorpusReader):
        """nltk's reader without the Open Multilingual WordNet: no version map (it reads ``index.sense``
        twice, seconds per process, and serves only the multilingual functions)."""

        def map_wn(self, version: str = "wordnet") -> None:
            return None

    with warnings.catch_warnings():  # "multilingual functions are not available": no OMW, on purpose
        warnings.simplefilter("ignore", UserWarning)
        return _EnglishWordNetReader(root, None)


# ---------------------------------------------------------------------------------------------------
# Near-synonyms
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhraseNoun:
    """The noun a phrase is compared by: its text and its lemma (both lower-case)."""

    text: str
    lemma: str


def near_synonyms(a: PhraseNoun | None, b: PhraseNoun | None, rule: SynonymRule, wordnet: Any | None) -> bool:
    """Whether nouns ``a`` and ``b`` are near-synonyms under ``rule`` (``False`` when either is missing)."""
    if a is None or b is None:
        return False
    if (rule.same_lemma or not rule.use_wordnet) and a.lemma == b.lemma:
        return True
    if not rule.use_wordnet or wordnet is None:
        return False
    pos = "n" if rule.nouns_only else None
    senses_a = wordnet.synsets(a.text, pos=pos)
    senses_b = wordnet.synsets(b.text, pos=pos)
    shared = 0
    for sense_a in senses_a:
        for sense_b in senses_b:
            similarity = _path_similarity(sense_a, sense_b)
            if similarity is not None and similarity > rule.min_path_similarity:
                shared += 1
                if shared >= rule.min_shared_senses:
                    return True
    return False


def _path_similarity(a: Any, b: Any) -> float | None:
    try:
        return a.path_similarity(b)
    except (ValueError, TypeError):  # senses of different parts of speech with no common root
        return None


NOUN_TAGS = ("NOUN", "PROPN")


def phrase_noun(doc_span: Sequence[Any], *, first: bool) -> PhraseNoun | None:
    """The noun of a spaCy span (or doc): its first NOUN/PROPN token, or its head (``first=False``).

    The head is the span's root when that root is a noun, else the last noun of the span; ``None`` when the
    span holds no noun.
    """
    nouns = [t for t in doc_span if t.pos_ in NOUN_TAGS]
    if not nouns:
        return None
    if first:
        chosen = nouns[0]
    else:
        root = getattr(doc_span, "root", None)
        chosen = root if root is not None and root.pos_ in NOUN_TAGS else nouns[-1]
    return PhraseNoun(text=chosen.text.lower(), lemma=(chosen.lemma_ or chosen.text).lower())


# ---------------------------------------------------------------------------------------------------
# The public code's first noun: NLTK tokens and Penn Treebank tags
# ---------------------------------------------------------------------------------------------------

#: Penn Treebank proper-noun tags; spaCy's small model gives them to lower-case modifiers of a short
#: phrase ("the white cup": DT NNP NNP; "teddy bear": NNP NNP), where NLTK's tagger says JJ / NN.
PROPER_NOUN_TAGS = ("NNP", "NNPS")


def phrase_tokens(phrase: str) -> list[str]:
    """NLTK's Treebank word tokens of a one-sentence phrase (what the code's ``word_tokenize`` gives)."""
    from nltk.tokenize import NLTKWordTokenizer

    return list(NLTKWordTokenizer().tokenize(phrase))


def penn_tags(tokens: Sequence[str], *, fix_lowercase_proper: bool = True) -> list[tuple[str, str]]:
    """``(token, tag)`` Penn Treebank tags of pre-split tokens, from spaCy's fine-grained tagger.

    Stands for the code's ``nltk.pos_tag`` (NLTK's averaged-perceptron data is on no package registry).
    With ``fix_lowercase_proper``, a lower-case token tagged ``NNP``/``NNPS`` is read as a modifier
    (``JJ``) when the next token is a noun, else as ``NN``: the small spaCy model calls
    lower-case adjectives of a bare phrase proper nouns, NLTK's tagger does not. Without it, spaCy's raw
    tags (then "white" is the first noun of "the white cup").
    """
    from spacy.tokens import Doc

    from workers.engine.blocks.text import get_nlp

    words = [t for t in tokens if t]
    if not words:
        return []
    nlp = get_nlp()
    doc = Doc(nlp.vocab, words=words)
    for _, component in nlp.pipeline:
        doc = component(doc)
    tags = [t.tag_ for t in doc]
    if fix_lowercase_proper:
        for i, (word, tag) in enumerate(zip(words, tags, strict=True)):
            if tag in PROPER_NOUN_TAGS and word.islower():
                next_noun = i + 1 < len(tags) and tags[i + 1].startswith("N")
                tags[i] = "JJ" if next_noun else "NN"
    return list(zip(words, tags, strict=True))


def first_penn_noun(phrase: str, *, fix_lowercase_proper: bool = True) -> str | None:
    """The code's noun of a phrase: the first token whose Penn tag starts with ``N`` (``None``: none)."""
    for token, tag in penn_tags(phrase_tokens(phrase), fix_lowercase_proper=fix_lowercase_proper):
        if tag.startswith("N"):
            return token
    return None


def phrase_noun_code(phrase: str, *, fix_lowercase_proper: bool = True) -> PhraseNoun | None:
    """:func:`first_penn_noun` as a :class:`PhraseNoun` (text as written: WordNet lower-cases it)."""
    noun = first_penn_noun(phrase, fix_lowercase_proper=fix_lowercase_proper)
    return None if noun is None else PhraseNoun(text=noun, lemma=noun.lower())


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m workers.engine.methods.tas.lexicon ensure [--source DIR] [--data-dir DIR]``: build the folder, check it."""
    parser = argparse.ArgumentParser(
        prog="python -m workers.engine.methods.tas.lexicon", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    ensure = sub.add_parser(
        "ensure", help="lay WordNet out for nltk in the project's data folder and check it"
    )
    ensure.add_argument("--source", type=Path, default=DEBIAN_WORDNET_DIR, help="WordNet 3.0 database folder")
    ensure.add_argument(
        "--data-dir", type=Path, default=None, help="nltk data root (default: RIS_NLTK_DATA or var/nltk_data)"
    )
    args = parser.parse_args(argv)
    try:
        folder = build_wordnet_corpus(args.source, args.data_dir)
        reader = load_wordnet(args.data_dir, source=args.source)
        senses = len(reader.synsets("dog", pos="n"))
    except WordNetMissingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"WordNet ready for nltk in {folder} ({senses} noun senses of 'dog')")
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised through scripts/ensure-wordnet.sh
    raise SystemExit(main())
