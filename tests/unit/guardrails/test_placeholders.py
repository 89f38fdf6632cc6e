"""Placeholder numbering, restoring whole texts, and restoring text that arrives in pieces."""

from __future__ import annotations

import pytest

from gatewayd.guardrails.placeholders import Redactions


def _issued() -> Redactions:
    redactions = Redactions()
    redactions.placeholder("EMAIL_ADDRESS", "a@x.io")
    redactions.placeholder("EMAIL_ADDRESS", "b@x.io")
    redactions.placeholder("PHONE_NUMBER", "555-1234")
    return redactions


def test_numbering_counts_per_entity_from_one() -> None:
    """Each entity has its own counter starting at 1."""
    redactions = Redactions()
    assert redactions.placeholder("EMAIL_ADDRESS", "a@x.io") == "<EMAIL_ADDRESS_1>"
    assert redactions.placeholder("PHONE_NUMBER", "555-1234") == "<PHONE_NUMBER_1>"
    assert redactions.placeholder("EMAIL_ADDRESS", "b@x.io") == "<EMAIL_ADDRESS_2>"
    assert len(redactions) == 3


def test_same_value_same_placeholder() -> None:
    """A value seen again in the request gets the placeholder it got the first time."""
    redactions = Redactions()
    first = redactions.placeholder("EMAIL_ADDRESS", "a@x.io")
    redactions.placeholder("EMAIL_ADDRESS", "b@x.io")
    assert redactions.placeholder("EMAIL_ADDRESS", "a@x.io") == first
    assert len(redactions) == 2


def test_entity_names_are_kept_inside_the_placeholder_pattern() -> None:
    """An entity name with other characters still makes a placeholder restore finds."""
    redactions = Redactions()
    placeholder = redactions.placeholder("my-secret.kind", "v4lue")
    assert placeholder == "<MY_SECRET_KIND_1>"
    assert redactions.restore(f"x {placeholder} y") == "x v4lue y"


def test_restore_turns_issued_placeholders_back_only() -> None:
    """Issued placeholders become their values; unknown ones and lookalikes stay as written."""
    redactions = _issued()
    text = "<EMAIL_ADDRESS_2>, <EMAIL_ADDRESS_9>, <PHONE_NUMBER_1>, <b>, <EMAIL_ADDRESS_1"
    assert redactions.restore(text) == "b@x.io, <EMAIL_ADDRESS_9>, 555-1234, <b>, <EMAIL_ADDRESS_1"


def test_restore_ranges_mark_restored_values() -> None:
    """The ranges point at the restored values in the new text."""
    restored, ranges = _issued().restore_ranges("to <EMAIL_ADDRESS_1> or <PHONE_NUMBER_1>!")
    assert restored == "to a@x.io or 555-1234!"
    assert [restored[s:e] for s, e in ranges] == ["a@x.io", "555-1234"]


def test_restore_returns_the_same_text_when_nothing_matches() -> None:
    """Text without an issued placeholder comes back as the same object."""
    text = "nothing <here> to <EMAIL_ADDRESS_7>"
    assert _issued().restore(text) is text
    assert Redactions().restore(text) is text


def test_repr_never_shows_values() -> None:
    """A repr in a log or traceback tells how many placeholders, not what they hide."""
    assert "a@x.io" not in repr(_issued())


@pytest.mark.parametrize(
    ("tail", "held"),
    [
        ("<", "<"),
        ("<EMA", "<EMA"),
        ("<EMAIL_ADDRESS_1", "<EMAIL_ADDRESS_1"),
        ("<PHONE_NUMBER_", "<PHONE_NUMBER_"),
        ("<EMAIL_ADDRESS_3", ""),
        ("<b", ""),
        ("a < b", ""),
        ("<EMAIL_ADDRESS_1>", ""),
    ],
)
def test_restorer_holds_back_only_a_partial_placeholder(tail: str, held: str) -> None:
    """Only a trailing prefix of an issued placeholder is held; everything else goes out."""
    restorer = _issued().restorer()
    text = "say " + tail
    out, _ = restorer.push(text)
    assert out == _issued().restore(text[: len(text) - len(held)])
    rest, _ = restorer.push("", final=True)
    assert rest == held


def test_restorer_restores_a_placeholder_split_at_every_position() -> None:
    """However a placeholder is split in two pieces, the pieces together restore it."""
    text = "mail <EMAIL_ADDRESS_2> now"
    start, end = text.index("<"), text.index(">") + 1
    for cut in range(len(text) + 1):
        restorer = _issued().restorer()
        first, _ = restorer.push(text[:cut])
        second, _ = restorer.push(text[cut:])
        last, _ = restorer.push("", final=True)
        assert first + second + last == "mail b@x.io now", cut
        # Everything but the partial placeholder went out with the first piece.
        if start < cut < end:
            assert first == text[:start], cut
        else:
            assert first == _issued().restore(text[:cut]), cut
        assert last == ""


def test_restorer_ranges_are_relative_to_each_release() -> None:
    """Ranges returned with a released piece point into that piece."""
    restorer = _issued().restorer()
    restorer.push("x <PHONE_")
    out, ranges = restorer.push("NUMBER_1> y")
    assert out == "555-1234 y"
    assert [out[s:e] for s, e in ranges] == ["555-1234"]


def test_restorer_without_placeholders_holds_nothing() -> None:
    """When the request redacted nothing, a trailing `<` is released at once."""
    restorer = Redactions().restorer()
    assert restorer.push("a <")[0] == "a <"
