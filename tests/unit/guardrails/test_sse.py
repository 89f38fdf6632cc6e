"""The incremental SSE parser: events from arbitrary byte pieces, original bytes kept."""

from __future__ import annotations

import pytest

from gatewayd.guardrails.sse import Event, SSEParser, encode

STREAM = (
    b": keep-alive\n\n"
    b'data: {"a": 1}\n\n'
    b"event: delta\nid: 7\ndata: line one\ndata: line two\n\n"
    b"data:no-space\n\n"
    b"data\n\n"
    b"retry: 100\n\n"
    b"data: [DONE]\n\n"
)


def _parse(chunks: list[bytes], *, cr_ends: bool = False) -> list[Event]:
    """Events from feeding `chunks`; a stream ending in a blank line leaves none for finish,
    except with CR line ends, where only the end of the stream shows the last CR is no CRLF."""
    parser = SSEParser()
    events: list[Event] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    tail = parser.finish()
    assert len(tail) == (1 if cr_ends else 0)
    return events + tail


def _summary(events: list[Event]) -> list[tuple[bytes | None, list[bytes]]]:
    return [(event.data, event.other) for event in events]


EXPECTED = [
    (None, [b": keep-alive"]),
    (b'{"a": 1}', []),
    (b"line one\nline two", [b"event: delta", b"id: 7"]),
    (b"no-space", []),
    (b"", []),
    (None, [b"retry: 100"]),
    (b"[DONE]", []),
]


def test_fields_comments_and_multi_line_data() -> None:
    """Data lines are joined by newlines; comments and other fields are kept as lines."""
    events = _parse([STREAM])
    assert _summary(events) == EXPECTED
    assert b"".join(event.raw for event in events) == STREAM


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_every_split_position_gives_the_same_events(eol: bytes) -> None:
    """Split in two at every byte, with any line ending, the events and their bytes are the same."""
    stream = STREAM.replace(b"\n", eol)
    for cut in range(len(stream) + 1):
        events = _parse([stream[:cut], stream[cut:]], cr_ends=eol == b"\r")
        assert _summary(events) == EXPECTED, cut
        assert b"".join(event.raw for event in events) == stream, cut


def test_byte_at_a_time_with_crlf() -> None:
    """One byte per feed, CRLF line ends included, still yields whole events."""
    stream = STREAM.replace(b"\n", b"\r\n")
    events = _parse([stream[i : i + 1] for i in range(len(stream))])
    assert _summary(events) == EXPECTED
    assert b"".join(event.raw for event in events) == stream


def test_a_cr_at_a_chunk_end_waits_for_the_next_byte() -> None:
    """A CR ending a chunk is not taken as a line end until the next byte shows it is not CRLF."""
    parser = SSEParser()
    assert parser.feed(b"data: x\r\n\r") == []
    [event] = parser.feed(b"\n")
    assert event.raw == b"data: x\r\n\r\n"
    assert event.data == b"x"


def test_an_event_completes_in_the_feed_that_ends_it() -> None:
    """Events come out as soon as their blank line arrives, not later."""
    parser = SSEParser()
    assert parser.feed(b"data: one\n") == []
    assert [e.data for e in parser.feed(b"\ndata: two\n\nda")] == [b"one", b"two"]
    assert [e.data for e in parser.feed(b"ta: three\n\n")] == [b"three"]


def test_finish_ends_an_unterminated_event() -> None:
    """At the end of the stream a last event without its blank line still comes out whole."""
    parser = SSEParser()
    assert [e.data for e in parser.feed(b"data: one\n\ndata: two\ndata: th")] == [b"one"]
    [last] = parser.finish()
    assert last.data == b"two\nth"
    assert last.raw == b"data: two\ndata: th"
    assert parser.finish() == []


def test_finish_takes_a_trailing_cr_as_a_line_end() -> None:
    """A CR that was the last byte of the stream ends its line."""
    parser = SSEParser()
    assert parser.feed(b"data: x\r") == []
    [event] = parser.finish()
    assert (event.data, event.raw) == (b"x", b"data: x\r")


def test_a_field_merely_starting_with_data_is_not_data() -> None:
    """`dataset: 1` is some other field, not a data line."""
    [event] = SSEParser().feed(b"dataset: 1\n\n")
    assert event.data is None
    assert event.other == [b"dataset: 1"]


def test_encode_keeps_other_lines_before_one_data_line() -> None:
    """A rewritten event keeps its other fields and carries its data on one line."""
    assert encode([b"event: x", b"id: 2"], b"{}") == b"event: x\nid: 2\ndata: {}\n\n"
    assert encode([], b"[DONE]") == b"data: [DONE]\n\n"


def test_repr_hides_the_data() -> None:
    """An event's repr gives its size, not the conversation it carries."""
    [event] = SSEParser().feed(b"data: secret words\n\n")
    assert "secret" not in repr(event)
