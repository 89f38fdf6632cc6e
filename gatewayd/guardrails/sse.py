"""An incremental server-sent events parser that keeps each event's bytes.

Bytes arrive in whatever pieces TCP made of them. Lines end in `\\n`, `\\r\\n`
or `\\r`; a blank line ends an event; its `data:` lines are joined by `\\n`
(WHATWG HTML, "Interpreting an event stream"). Every event carries its
exact original bytes, so one nobody changes is forwarded as it came.
"""

from __future__ import annotations

import re

# A blank line: a line end right after a line end. A CR counts alone only
# when no LF follows, so CRLF is never read as CR + LF.
_EVENT_END = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r(?!\n)|\n)")
_CR = 13


class Event:
    """One event: its original bytes, its joined data (None without a data
    line), and its other lines (fields, comments) without line ends."""

    __slots__ = ("data", "other", "raw")

    def __init__(self, raw: bytes, data: bytes | None, other: list[bytes]) -> None:
        self.raw = raw
        self.data = data
        self.other = other

    def __repr__(self) -> str:
        # An event's data is a client's conversation; it stays out of reprs.
        return f"Event({len(self.raw)} bytes)"

    @classmethod
    def parse(cls, raw: bytes) -> Event:
        """The event these bytes (one event, its blank line included or not) hold."""
        data: bytes | None = None
        other: list[bytes] = []
        # bytes.splitlines breaks at exactly SSE's line ends: LF, CRLF, CR.
        for line in raw.splitlines():
            if line[:5] == b"data:":
                value = line[6:] if line[5:6] == b" " else line[5:]
            elif line == b"data":
                value = b""
            else:
                if line:
                    other.append(line)
                continue
            data = value if data is None else data + b"\n" + value
        return cls(raw, data, other)


# The field lines a guarded answer keeps: an event name or id that reads as a
# token, a retry in milliseconds. Nothing else in them is text anyone reads.
_KEPT_FIELD = re.compile(rb"(?:event|id): ?[\w.:\-]{0,128}|retry: ?\d{1,10}", re.ASCII)


def read_fields(event: Event) -> Event:
    """The event as a guard passes it on: comments and unknown fields carry
    text no filter reads and every client ignores, so they are left out (a
    comment-only keep-alive stays one, emptied)."""
    kept = [line for line in event.other if _KEPT_FIELD.fullmatch(line)]
    if len(kept) == len(event.other):
        return event
    if event.data is not None:
        return Event(encode(kept, event.data), event.data, kept)
    raw = b"".join(line + b"\n" for line in kept) + b"\n" if kept else b":\n\n"
    return Event(raw, None, kept)


def encode(other: list[bytes], data: bytes) -> bytes:
    """An event with the given other lines and `data`, a data line per line of it."""
    head = b"".join(line + b"\n" for line in other) if other else b""
    if b"\n" not in data:
        return head + b"data: " + data + b"\n\n"
    return head + b"".join(b"data: " + line + b"\n" for line in data.split(b"\n")) + b"\n"


class SSEParser:
    """Splits a byte stream into events as the bytes arrive."""

    __slots__ = ("_buf", "_lf_only", "_scan")

    def __init__(self) -> None:
        self._buf = b""  # bytes of the event in progress
        self._scan = 0  # no event ends before this offset in _buf
        # Until a CR shows up, events end at "\n\n" and bytes.find does.
        self._lf_only = True

    def feed(self, chunk: bytes) -> list[Event]:
        """The events completed by `chunk`."""
        if self._lf_only and b"\r" in chunk:
            self._lf_only = False
        return self._split(self._buf + chunk if self._buf else chunk, final=False)

    def finish(self) -> list[Event]:
        """The stream ended: an unterminated last event, if any, ends here too."""
        events = self._split(self._buf, final=True) if self._buf else []
        if self._buf:
            events.append(Event.parse(self._buf))
            self._buf = b""
            self._scan = 0
        return events

    def _split(self, buf: bytes, *, final: bool) -> list[Event]:
        events: list[Event] = []
        start = 0
        pos = self._scan
        if self._lf_only:
            while (blank := buf.find(b"\n\n", pos)) >= 0:
                end = blank + 2
                if buf.find(b"\n", start) == blank and buf.startswith(b"data: ", start):
                    # The usual event, one data line: no need to split lines.
                    events.append(Event(buf[start:end], buf[start + 6 : blank], []))
                else:
                    events.append(Event.parse(buf[start:end]))
                start = pos = end
        else:
            search = _EVENT_END.search
            while (match := search(buf, pos)) is not None:
                end = match.end()
                # A CR that ends the bytes so far may be the first half of CRLF.
                if end == len(buf) and buf[-1] == _CR and not final:
                    break
                events.append(Event.parse(buf[start:end]))
                start = pos = end
        self._buf = buf[start:]
        # The end of an event is at most 4 bytes long: 3 of them may be here.
        self._scan = max(0, len(self._buf) - 3)
        return events
