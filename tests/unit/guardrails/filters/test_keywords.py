"""The keywords filter: whole-word, any-case, Unicode-aware deny-list phrases."""

from __future__ import annotations

import random
import string
from pathlib import Path

import pytest

from gatewayd.config.schema import KeywordsFilterConfig
from gatewayd.guardrails.filters.keywords import KeywordsFilter

WORDS = ("Project Falcon", "falcon", "c++", "#internal", "straße", "机密", "ÉTÉ indien")


def keywords(*words: str, entity: str = "KEYWORD") -> KeywordsFilter:
    """A keywords filter over `words`."""
    return KeywordsFilter(KeywordsFilterConfig(name="kw", words=words, entity=entity))


def found(flt: KeywordsFilter, text: str) -> list[str]:
    """The matched text of every span, in order."""
    return [text[s.start : s.end] for s in flt.scan(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("the PROJECT  FALCON launch", ["PROJECT  FALCON"]),  # longest phrase, any case
        ("project\nfalcon", ["project\nfalcon"]),
        ("falcon heavy, falconry, xfalcon", ["falcon"]),  # whole words only
        ("I like C++ and #internal notes", ["C++", "#internal"]),
        ("xc++ and #internals", []),
        ("die Straße", ["Straße"]),
        ("这是机密文件", ["机密"]),  # no spaces between words in Chinese
        ("un été indien", ["été indien"]),
    ],
)
def test_phrases_match_as_whole_words_in_any_case(text: str, expected: list[str]) -> None:
    """Matches ignore case and whitespace runs, respect word edges, and prefer the longest."""
    assert found(keywords(*WORDS), text) == expected


def test_entity_comes_from_config() -> None:
    """Spans carry the configured entity name."""
    assert [s.entity for s in keywords("falcon", entity="CODENAME").scan("falcon")] == ["CODENAME"]


def test_phrases_are_read_from_a_file_with_comments(tmp_path: Path) -> None:
    """A file gives one phrase per line; blank lines and '#' lines are skipped."""
    path = tmp_path / "deny.txt"
    path.write_text("# codenames\n\nblue harvest\n  acme merger  \n", encoding="utf-8")
    flt = KeywordsFilter(KeywordsFilterConfig(name="kw", words=("falcon",), file=path))
    assert found(flt, "falcon, Blue Harvest, acme merger, # codenames") == [
        "falcon",
        "Blue Harvest",
        "acme merger",
    ]


def test_no_phrases_finds_nothing_and_holds_nothing() -> None:
    """An empty list is a filter that never matches."""
    flt = keywords()
    assert flt.scan("anything at all") == []
    assert flt.holdback("anything") == 0


def test_a_long_list_matches_like_a_short_one() -> None:
    """Past a few first letters the pattern takes another form; the matches stay the same."""
    rng = random.Random(7)
    many = {"".join(rng.choices(string.ascii_lowercase, k=rng.randint(4, 9))) for _ in range(300)}
    words = sorted(many)[:40]
    text = " ".join(rng.choice(words) + rng.choice(["", "s", "x9"]) for _ in range(200))
    expected = [w for w in text.split() if w in many]
    assert found(keywords(*many, "#tag"), text + " #tag") == [*expected, "#tag"]


def test_overlong_phrases_are_refused() -> None:
    """A phrase longer than 200 characters fails at load."""
    with pytest.raises(ValueError, match="longer than 200"):
        keywords("x" * 201)


@pytest.mark.parametrize(
    ("text", "held"),
    [
        ("the proj", "proj"),
        ("the project ", "project "),
        ("the project fal", "project fal"),
        ("a falcon", "falcon"),  # "falconry" would not match
        ("the plan ", ""),
        ("falconry ", ""),
    ],
)
def test_holdback_holds_a_phrase_still_arriving(text: str, held: str) -> None:
    """What could still complete a phrase is held; anything else is released."""
    assert keywords(*WORDS).holdback(text) == len(held)
