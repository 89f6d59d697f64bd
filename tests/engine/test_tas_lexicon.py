"""WordNet for TAS: the corpus folder nltk reads, near-synonyms, and the error without WordNet.

These tests use the real WordNet 3.0 (Debian's wordnet-base, laid out by ``scripts/ensure-wordnet.sh``,
which ``make test`` runs); without it they fail with the message naming that script.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.engine.blocks.text import get_nlp
from workers.engine.methods.tas.lexicon import (
    LEXNAMES,
    WORDNET_FILES,
    PhraseNoun,
    SynonymRule,
    WordNetMissingError,
    build_wordnet_corpus,
    lexnames_text,
    load_wordnet,
    near_synonyms,
    phrase_noun,
)

OURS = SynonymRule()
CODE = SynonymRule(same_lemma=False, nouns_only=False)


@pytest.fixture(scope="module")
def wordnet():
    return load_wordnet()


def _noun(word: str) -> PhraseNoun:
    return PhraseNoun(word, word)


def test_lexnames_file_has_the_45_lexicographer_files():
    lines = lexnames_text().splitlines()
    assert len(lines) == len(LEXNAMES) == 45
    assert lines[0] == "00\tadj.all\t3"
    assert lines[3] == "03\tnoun.Tops\t1"
    assert lines[29] == "29\tverb.body\t2"
    assert lines[44] == "44\tadj.ppl\t3"


def test_build_copies_the_database_and_writes_lexnames(tmp_path: Path):
    source = tmp_path / "debian"
    source.mkdir()
    for name in WORDNET_FILES:
        (source / name).write_text(f"stand-in for {name}\n")
    folder = build_wordnet_corpus(source, tmp_path / "nltk_data")
    assert folder == tmp_path / "nltk_data" / "corpora" / "wordnet"
    for name in WORDNET_FILES:
        copied = folder / name
        assert copied.read_text() == f"stand-in for {name}\n"
        assert not copied.is_symlink() and copied.stat().st_nlink == 1  # nltk refuses links
    assert (folder / "lexnames").read_text() == lexnames_text()
    assert build_wordnet_corpus(source, tmp_path / "nltk_data") == folder  # idempotent


def test_missing_database_names_the_fix(tmp_path: Path):
    with pytest.raises(WordNetMissingError, match="ensure-wordnet.sh") as caught:
        build_wordnet_corpus(tmp_path / "nowhere", tmp_path / "nltk_data")
    assert "lexicon_fallback" in str(caught.value)


def test_installed_wordnet_reads_senses(wordnet):
    dog = wordnet.synset("dog.n.01")
    assert dog.lexname() == "noun.animal"
    assert any(s.name() == "man.n.01" for s in wordnet.synsets("men", pos="n"))  # morphy's plural


def test_near_synonyms_ours_and_the_codes(wordnet):
    assert near_synonyms(_noun("man"), _noun("men"), OURS, wordnet)
    assert near_synonyms(_noun("man"), _noun("men"), CODE, wordnet)  # 3+ shared senses
    assert not near_synonyms(_noun("man"), _noun("shirt"), OURS, wordnet)
    # "giraffe" has one sense: the code's 3-shared-senses rule does not make it its own near-synonym.
    assert near_synonyms(_noun("giraffe"), _noun("giraffe"), OURS, wordnet)
    assert not near_synonyms(_noun("giraffe"), _noun("giraffe"), CODE, wordnet)
    lemma_only = SynonymRule(use_wordnet=False)
    assert near_synonyms(PhraseNoun("men", "man"), _noun("man"), lemma_only, None)
    assert not near_synonyms(_noun("dog"), _noun("puppy"), lemma_only, None)
    assert not near_synonyms(None, _noun("man"), OURS, wordnet)


def test_phrase_noun_head_or_first():
    doc = get_nlp()("a tennis player")
    assert phrase_noun(doc, first=False) == PhraseNoun("player", "player")
    assert phrase_noun(doc, first=True) == PhraseNoun("tennis", "tennis")
    assert phrase_noun(get_nlp()("the left"), first=False) in (None, PhraseNoun("left", "left"))
