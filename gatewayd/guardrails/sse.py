"""An incremental server-sent events parser that keeps each event's bytes.

Bytes arrive in whatever pieces TCP made of them. Lines end in `\\n`, `\\r\\n`
or `\\r`; a blank line ends an event; its `data:` lines are joined by `\\n`
(WHATWG HTML, "Interpreting an event stream"). Every event carries its
exact original bytes, so one nobody changes is forwarded as it came.
"""

from __future__ import annotations

import re

_EOL = re.compile(rb"\r\n|\r|\n")
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


def encode(other: list[bytes], data: bytes) -> bytes:
    """An event with the given other lines and a single data line."""
    head = b"".join(line + b"\n" for line in other) if other else b""
    return head + b"data: " + data + b"\n\n"


class SSEParser:
    """Splits a byte stream into events as the bytes arrive."""

    __slots__ = ("_buf", "_data", "_other", "_scan")

    def __init__(self) -> None:
        self._buf = b""  # bytes of the event in progress
        self._scan = 0  # where in _buf the next line starts
        self._data: list[bytes] | None = None
        self._other: list[bytes] = []

    def feed(self, chunk: bytes) -> list[Event]:
        """The events completed by `chunk`."""
        return self._parse(self._buf + chunk if self._buf else chunk, final=False)

    def finish(self) -> list[Event]:
        """The stream ended: an unterminated last event, if any, ends here too."""
        if not self._buf:
            return []
        events = self._parse(self._buf, final=True)
        buf = self._buf
        if buf:
            if tail := buf[self._scan :]:
                self._line(tail)
            events.append(self._take(buf))
            self._buf = b""
            self._scan = 0
        return events

    def _parse(self, buf: bytes, *, final: bool) -> list[Event]:
        events: list[Event] = []
        start = 0
        pos = self._scan
        size = len(buf)
        search = _EOL.search
        while (match := search(buf, pos)) is not None:
            eol, nxt = match.span()
            # A lone CR that ends the bytes so far may be the first half of CRLF.
            if nxt == size and nxt - eol == 1 and buf[eol] == _CR and not final:
                break
            if eol == pos:
                events.append(self._take(buf[start:nxt]))
                start = nxt
            else:
                self._line(buf[pos:eol])
            pos = nxt
        self._buf = buf[start:]
        self._scan = pos - start
        return events

    def _take(self, raw: bytes) -> Event:
        data = self._data
        event = Event(raw, b"\n".join(data) if data is not None else None, self._other)
        self._data = None
        self._other = []
        return event

    def _line(self, line: bytes) -> None:
        if line.startswith(b"data"):
            if len(line) == 4:
                value = b""
            elif line[4] == 0x3A:  # ':'
                value = line[6:] if line[5:6] == b" " else line[5:]
            else:
                self._other.append(line)
                return
            if self._data is None:
                self._data = [value]
            else:
                self._data.append(value)
        else:
            self._other.append(line)
