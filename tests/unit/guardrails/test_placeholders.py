"""Placeholder numbering, restoring whole texts, and restoring text that arrives in pieces."""

from __future__ import annotations

import orjson
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


def test_issued_ranges_mark_this_requests_placeholders_only() -> None:
    """`issued` points at this request's placeholders, not at lookalikes or invented ones."""
    text = "to <EMAIL_ADDRESS_1> or <EMAIL_ADDRESS_9> or <PHONE_NUMBER_1>!"
    ranges = _issued().issued(text)
    assert [text[s:e] for s, e in ranges] == ["<EMAIL_ADDRESS_1>", "<PHONE_NUMBER_1>"]
    assert Redactions().issued(text) == []


def test_placeholders_the_client_wrote_are_never_issued() -> None:
    """A client's literal `<EMAIL_ADDRESS_1>` is reserved: a real value gets the next name,
    and the client's own text is never restored into that value."""
    redactions = Redactions()
    redactions.reserve("my template says <EMAIL_ADDRESS_1> and <EMAIL_ADDRESS_2>")
    assert redactions.placeholder("EMAIL_ADDRESS", "dana@example.com") == "<EMAIL_ADDRESS_3>"
    assert redactions.placeholder("EMAIL_ADDRESS", "ops@example.com") == "<EMAIL_ADDRESS_4>"
    answer = "<EMAIL_ADDRESS_1> stays, <EMAIL_ADDRESS_3> is restored"
    assert redactions.restore(answer) == "<EMAIL_ADDRESS_1> stays, dana@example.com is restored"


def test_restore_escapes_values_put_into_json_text() -> None:
    """In JSON text (tool-call arguments) a restored quote or backslash is escaped, so a
    value cannot end the string and add keys the client's code would parse."""
    redactions = Redactions()
    evil = 'x@y.org", "admin": true, "z": "\\'
    placeholder = redactions.placeholder("EMAIL_ADDRESS", evil)
    arguments = '{"to": "' + placeholder + '"}'
    restored = redactions.restore(arguments, json=True)
    assert orjson.loads(restored) == {"to": evil}
    restorer = redactions.restorer(json=True)
    streamed = restorer.push(arguments[:12]) + restorer.push(arguments[12:], final=True)
    assert streamed == restored


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
    out = restorer.push(text)
    assert out == _issued().restore(text[: len(text) - len(held)])
    rest = restorer.push("", final=True)
    assert rest == held


def test_restorer_restores_a_placeholder_split_at_every_position() -> None:
    """However a placeholder is split in two pieces, the pieces together restore it."""
    text = "mail <EMAIL_ADDRESS_2> now"
    start, end = text.index("<"), text.index(">") + 1
    for cut in range(len(text) + 1):
        restorer = _issued().restorer()
        first = restorer.push(text[:cut])
        second = restorer.push(text[cut:])
        last = restorer.push("", final=True)
        assert first + second + last == "mail b@x.io now", cut
        # Everything but the partial placeholder went out with the first piece.
        if start < cut < end:
            assert first == text[:start], cut
        else:
            assert first == _issued().restore(text[:cut]), cut
        assert last == ""


def test_snapshot_leaves_out_placeholders_issued_later() -> None:
    """A snapshot restores what was issued when it was taken, never what came after."""
    redactions = _issued()
    snapshot = redactions.snapshot()
    later = redactions.placeholder("EMAIL_ADDRESS", "new@x.io")
    assert snapshot.restore(f"{later} <EMAIL_ADDRESS_1>") == f"{later} a@x.io"


def test_restorer_without_placeholders_holds_nothing() -> None:
    """When the request redacted nothing, a trailing `<` is released at once."""
    restorer = Redactions().restorer()
    assert restorer.push("a <") == "a <"
