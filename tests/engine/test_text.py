"""The real spaCy parser on RefCOCO-style expressions: target noun phrase, subject, spatial words."""

from __future__ import annotations

import pytest

from workers.engine.blocks.text import SPATIAL_VOCABULARY, find_spatial_words, parse_expression
from workers.engine.core.errors import BadInputError

# (expression, expected noun phrase, expected spatial words), in RefCOCO / RefCOCO+ / RefCOCOg style.
CASES = [
    ("man in the red shirt on the left", "man", ("left",)),
    ("left guy", "guy", ("left",)),
    ("the bright umbrella above the table", "the bright umbrella", ("above",)),
    ("woman holding a baby", "woman", ()),
    ("far right elephant", "far right elephant", ("far", "right")),
    ("a giraffe standing next to a tree", "a giraffe", ()),
    ("blue car", "blue car", ()),
    ("the closest zebra", "the closest zebra", ("closest",)),
    ("bottom left corner bowl", "bottom left corner bowl", ("bottom", "left")),
    ("guy in white shirt", "guy", ()),
    ("Zebra on the right", "zebra", ("right",)),
    ("top right pizza slice", "top right pizza slice", ("top", "right")),
    ("the middle cake", "the middle cake", ("middle",)),
    ("kid wearing a helmet", "kid", ()),
    ("the smaller bear under the tree", "the smaller bear", ("under",)),
    ("lady with the black purse", "lady", ()),
    ("player in front", "player", ("front",)),
    ("the leftmost sheep", "the leftmost sheep", ("leftmost",)),
    ("a brown horse behind the fence", "a brown horse", ("behind",)),
    ("the upper sandwich", "the upper sandwich", ("upper",)),
    ("bright orange umbrella", "bright orange umbrella", ()),
    ("couch in the center of the room", "couch", ("center",)),
    ("the dog lying below the bench", "the dog", ("below",)),
    ("person at far left", "person", ("far", "left")),
    ("copyright sign", "copyright sign", ()),
    ("the lower right bowl of rice", "the lower right bowl", ("lower", "right")),
    ("the chair at the back", "the chair", ("back",)),
    ("A man in a black jacket is riding a horse .", "a man", ()),
]


@pytest.mark.parametrize(("expression", "noun_phrase", "spatial"), CASES)
def test_noun_phrase_and_spatial_words(expression: str, noun_phrase: str, spatial: tuple[str, ...]) -> None:
    parsed = parse_expression(expression)
    assert parsed.noun_phrase == noun_phrase
    assert parsed.spatial_words == spatial


def test_at_least_twenty_cases() -> None:
    assert len(CASES) >= 20


@pytest.mark.parametrize(
    ("expression", "subject"),
    [
        ("man in the red shirt on the left", "man"),
        ("the bright umbrella above the table", "umbrella"),
        ("A man in a black jacket is riding a horse .", "man"),
        ("top right pizza slice", "slice"),
        ("the dog lying below the bench", "dog"),
    ],
)
def test_subject_token_and_its_character_span(expression: str, subject: str) -> None:
    parsed = parse_expression(expression)
    assert parsed.subject == subject
    start, end = parsed.subject_char_span
    assert parsed.normalized[start:end] == subject
    assert parsed.tokens[parsed.subject_index] == subject


def test_reference_normalisation_lower_cases_and_rejoins_tokens() -> None:
    parsed = parse_expression("  The Man,   on the LEFT.")
    assert parsed.normalized == "the man , on the left ."
    assert parsed.tokens == ("the", "man", ",", "on", "the", "left", ".")
    assert parsed.text == "  The Man,   on the LEFT."


def test_spatial_words_match_whole_words_only() -> None:
    assert find_spatial_words(["bright", "copyright", "feast", "toppings", "backpack"]) == ()
    assert find_spatial_words(["Right", "EAST", "top"]) == ("right", "east", "top")
    assert "right" in SPATIAL_VOCABULARY and "bright" not in SPATIAL_VOCABULARY


def test_spatial_directions_group_synonyms() -> None:
    assert parse_expression("the leftmost cup under the shelf").spatial_directions == ("left", "bottom")


def test_noun_chunks_and_nouns_are_listed() -> None:
    parsed = parse_expression("a dog and a cat on a sofa")
    assert parsed.noun_chunks == ("a dog", "a cat", "a sofa")
    assert parsed.nouns == ("dog", "cat", "sofa")


def test_sentence_without_chunk_falls_back_to_the_sentence() -> None:
    parsed = parse_expression("second from left")
    assert parsed.noun_phrase == "second from left"
    assert parsed.noun_phrase_span == (0, 3)


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_expression_is_refused_in_words(text: str) -> None:
    with pytest.raises(BadInputError, match="empty"):
        parse_expression(text)


def test_very_long_and_non_latin_expressions_parse() -> None:
    long = parse_expression("the red car " * 1000)
    assert long.noun_phrase and len(long.normalized) <= 2000
    emoji = parse_expression("猫 on the left 🐱")
    assert emoji.spatial_words == ("left",)


def test_parsed_expression_is_frozen_and_json_ready() -> None:
    parsed = parse_expression("blue car")
    with pytest.raises(AttributeError):
        parsed.noun_phrase = "x"  # type: ignore[misc]
    assert parsed.to_dict()["noun_phrase"] == "blue car"
