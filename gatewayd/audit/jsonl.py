"""The JSON Lines audit file: encoding events, and appending to a file that
logrotate may rename or remove at any moment.

Every blocking call here runs on the audit writer's own worker thread, one at a
time; nothing in this module touches the event loop.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import orjson

from gatewayd.audit.event import AuditEvent

log = logging.getLogger(__name__)

DIR_MODE = 0o750
FILE_MODE = 0o640


@functools.lru_cache(maxsize=8)
def _utc_second(second: int) -> str:
    # A batch spans a second or two: formatting each second once saves ~1 us
    # of the ~3 us an event costs to encode.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def rfc3339(ts: float) -> str:
    """A Unix time as RFC 3339 UTC with six fractional digits: 2026-01-02T03:04:05.000006Z."""
    second, micros = divmod(round(ts * 1_000_000), 1_000_000)
    return f"{_utc_second(second)}.{micros:06d}Z"


def encode(event: AuditEvent) -> bytes:
    """One event as one JSON line (newline included), fields in column order."""
    record = event.as_dict()
    record["ts"] = rfc3339(event.ts)
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)


@dataclass(slots=True)
class Chunk:
    """Encoded lines on their way to the file; `offset` is how many bytes landed."""

    data: bytes
    events: int
    offset: int = 0
    # Lines already reported as written, so a retry never counts one twice.
    reported: int = 0

    @property
    def done(self) -> bool:
        """Whether every byte has been written."""
        return self.offset >= len(self.data)

    def newly_written(self) -> int:
        """Lines completed since the last call."""
        lines = self.data.count(b"\n", 0, self.offset)
        fresh, self.reported = lines - self.reported, lines
        return fresh

    def unwritten(self) -> int:
        """Events whose line has not been completed yet."""
        return self.events - self.data.count(b"\n", 0, self.offset)


def error_kind(exc: OSError) -> str:
    """A short fixed word for an I/O failure (ENOSPC, EACCES, ...), safe for logs and status."""
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


def encode_lines(events: Sequence[AuditEvent]) -> tuple[list[bytes], int]:
    """Each event as one JSON line, and how many could not be encoded (they are skipped)."""
    lines: list[bytes] = []
    for event in events:
        try:
            lines.append(encode(event))
        except TypeError:
            # orjson.JSONEncodeError: a value of a type JSON cannot carry. The
            # message may quote the value, so only the field-free fact is logged.
            log.error("audit event %s could not be encoded; dropped", event.event_id)
    return lines, len(events) - len(lines)


def encode_batch(events: Sequence[AuditEvent]) -> tuple[Chunk | None, int]:
    """The events as one chunk, and how many could not be encoded (they are skipped)."""
    lines, skipped = encode_lines(events)
    return (Chunk(b"".join(lines), len(lines)) if lines else None), skipped


def parse_rfc3339(text: str) -> float:
    """The Unix time of an RFC 3339 UTC timestamp as `rfc3339` writes it."""
    return datetime.fromisoformat(text).timestamp()


def decode(line: bytes) -> AuditEvent:
    """The event one JSON line (as `encode` wrote it) holds."""
    record = orjson.loads(line)
    record["ts"] = parse_rfc3339(record["ts"])
    return AuditEvent(**record)


class JsonlFile:
    """An append-only JSONL file, reopened when it was rotated away."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None

    def open(self) -> None:
        """Create the directory (0750) and file (0640) if missing, and open for appending."""
        self._open()

    def _open(self) -> int:
        self.path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        # O_APPEND makes each write land at the current end even when several
        # worker processes share the file, and a rotated-away file keeps its
        # writes rather than growing a hole.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        st = os.fstat(fd)
        self._fd, self._identity = fd, (st.st_dev, st.st_ino)
        return fd

    def write(self, chunk: Chunk) -> None:
        """Append the rest of `chunk`, advancing its offset; raises OSError with the offset kept."""
        fd = self._current_fd()
        if fd is None:
            self.close()
            fd = self._open()
            log.info("audit file %s (re)opened", self.path)
            # A line cut short by an earlier failed write stays torn in the old
            # file; the new one gets it whole.
            chunk.offset = chunk.data.rfind(b"\n", 0, chunk.offset) + 1
        view = memoryview(chunk.data)
        while not chunk.done:
            chunk.offset += os.write(fd, view[chunk.offset :])

    def close(self) -> None:
        """Close the file if open."""
        if self._fd is not None:
            fd, self._fd, self._identity = self._fd, None, None
            os.close(fd)

    def _current_fd(self) -> int | None:
        # One stat per batch catches logrotate's rename (or a removal), so no
        # copytruncate and no signal is needed.
        if self._fd is None:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return self._fd if (st.st_dev, st.st_ino) == self._identity else None
