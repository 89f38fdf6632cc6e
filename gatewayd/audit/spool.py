"""The on-disk spool: audit events the sink could not take yet, kept until it can.

    spool_dir/
      audit-<start ns>-<pid>.lock           held (flock) by the process writing the set
      audit-<start ns>-<pid>-000001.spool   segments, appended and fsync'd at each flush
      audit-<start ns>-<pid>-000001.done    how far a replay of that segment got
      dead-letter.jsonl                     events the sink refused, one JSON object a line

Each process writes its own file set, so workers never interleave. A record
is one line, `<crc32 hex> <JSON event>\n`; a crash can only cut the last
record of a segment short (nothing is ever appended after a failed write), and
the reader stops at the first record whose checksum fails. A set whose lock
is free belongs to a process that is gone: whoever takes the lock replays
it. Segments are replayed oldest first; after each stored batch the replay
notes how far it got, and a segment is removed once every event in it is
stored. A crash between storing a batch and noting it replays that batch
again, which the sink absorbs (the table skips event ids it already has).

Everything here blocks: the writer runs it on its own worker thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gatewayd.audit.event import AuditEvent
from gatewayd.audit.jsonl import DIR_MODE, FILE_MODE, decode, encode_lines

log = logging.getLogger(__name__)

# A segment this large is closed and the next one started, so a replay that
# crashes redoes at most this much, and replayed space is freed as it goes.
SEGMENT_BYTES = 16 * 1024 * 1024
DEAD_LETTER = "dead-letter.jsonl"
_SEGMENT = re.compile(r"(audit-\d+-\d+)-(\d{6})\.spool")
_DONE = re.compile(r"(audit-\d+-\d+)-(\d{6})\.done")
# The replayed offset, written in place at a fixed width so it never tears.
_OFFSET_WIDTH = 20
_LOCK = re.compile(r"(audit-\d+-\d+)\.lock")
_CRC = 8


def frame(line: bytes) -> bytes:
    """One JSON line (newline included) as a spool record, prefixed with its CRC-32."""
    return b"%08x " % zlib.crc32(line[:-1]) + line


def unframe(record: bytes) -> bytes | None:
    """The JSON line of one record (newline included), or None when it is torn or corrupt."""
    if len(record) <= _CRC + 1 or record[_CRC] != 0x20 or not record.endswith(b"\n"):
        return None
    try:
        crc = int(record[:_CRC], 16)
    except ValueError:
        return None
    line = record[_CRC + 1 :]
    return line if zlib.crc32(line[:-1]) == crc else None


@dataclass(frozen=True, slots=True)
class SpoolStats:
    """What /health/detailed shows: bytes and segments waiting, the oldest event's time."""

    bytes: int = 0
    segments: int = 0
    oldest_ts: float | None = None


@dataclass(slots=True)
class _Segment:
    path: Path
    size: int
    # Where the next replay starts; everything before it is stored.
    offset: int = 0
    oldest_ts: float | None = None


@dataclass(frozen=True, slots=True)
class Taken:
    """Events read from the oldest segment; `done` them once the sink stored them."""

    events: list[AuditEvent]
    segment: _Segment
    end: int
    # No valid record follows `end`: done() removes the segment.
    last: bool


class Spool:
    """One process's spool set, plus the sets of processes that are gone."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.stats = SpoolStats()
        self._set: str | None = None
        self._seq = 0
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._current: _Segment | None = None
        # Oldest first: claimed sets' segments, then this process's own.
        self._pending: list[_Segment] = []
        # Sets of processes that are gone, held (flock) while this one replays them.
        self._claims: dict[str, int] = {}

    @property
    def backlog(self) -> bool:
        """Whether any event waits in the spool (read from any thread)."""
        return self.stats.segments > 0

    def open(self) -> None:
        """Create the directory (0750) if missing, check it is writable, find others' sets."""
        self.directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise PermissionError(13, "spool directory is not writable", str(self.directory))
        self.scan()

    def scan(self) -> None:
        """Claim the sets whose writer is gone (their lock is free), for replay."""
        sets = {owner for name in os.listdir(self.directory) if (owner := _set_of(name))}
        for name in sorted(sets - {self._set} - set(self._claims)):
            self._claim(name)
        self._publish()

    def append(self, events: Sequence[AuditEvent]) -> int:
        """Append and fsync `events`; the number that could not be encoded (skipped).

        On OSError nothing of the batch counts as spooled: the segment is cut
        back to its last whole record, or abandoned when even that fails.
        """
        lines, skipped = encode_lines(events)
        if not lines:
            return skipped
        data = b"".join(map(frame, lines))
        fd, segment = self._segment_for_append()
        try:
            view = memoryview(data)
            written = 0
            while written < len(data):
                written += os.write(fd, view[written:])
            os.fsync(fd)
        except OSError:
            self._cut_back(fd, segment)
            raise
        if segment.oldest_ts is None:
            segment.oldest_ts = events[0].ts
        segment.size += len(data)
        self._publish()
        return skipped

    def take(self, limit: int) -> Taken | None:
        """Up to `limit` events from the oldest segment, or None when the spool is empty."""
        while self._pending:
            segment = self._pending[0]
            if segment is self._current:
                # Replay reaches the segment being written: close it, so what
                # arrives meanwhile goes to a new one after it.
                self._roll()
            taken = self._read(segment, limit)
            if taken.events:
                return taken
            self.done(taken)
        return None

    def done(self, taken: Taken) -> None:
        """The sink stored `taken`: move past it, removing a finished segment."""
        segment = taken.segment
        if not taken.last:
            segment.offset = taken.end
            segment.oldest_ts = taken.events[-1].ts
            _note_offset(segment.path, taken.end)
            self._publish()
            return
        with contextlib.suppress(FileNotFoundError):
            segment.path.unlink()
        with contextlib.suppress(FileNotFoundError):
            _done_path(segment.path).unlink()
        self._pending.remove(segment)
        owner = _set_of(segment.path.name)
        if owner in self._claims and not any(_set_of(s.path.name) == owner for s in self._pending):
            self._release(owner, remove=True)
        self._publish()

    def dead_letter(self, refused: Iterable[tuple[AuditEvent, str]]) -> None:
        """Append refused events to dead-letter.jsonl with why (`refused`), and fsync."""
        lines: list[bytes] = []
        for event, kind in refused:
            encoded, _ = encode_lines([event])
            # The event's JSON object, with the refusal as one more key.
            lines.extend(line[:-2] + b',"refused":"' + kind.encode() + b'"}\n' for line in encoded)
        path = self.directory / DEAD_LETTER
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            os.write(fd, b"".join(lines))
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Close every file and release every lock; an emptied own set is removed."""
        self._roll()
        for name in list(self._claims):
            self._release(name, remove=False)
        if self._set is not None and self._lock_fd is not None:
            if not any(_set_of(s.path.name) == self._set for s in self._pending):
                with contextlib.suppress(FileNotFoundError):
                    (self.directory / f"{self._set}.lock").unlink()
            os.close(self._lock_fd)
            self._lock_fd, self._set = None, None

    def _segment_for_append(self) -> tuple[int, _Segment]:
        if self._fd is not None and self._current is not None:
            if self._current.size < SEGMENT_BYTES:
                return self._fd, self._current
            self._roll()
        return self._start_segment()

    def _start_segment(self) -> tuple[int, _Segment]:
        if self._set is None:
            self._set = f"audit-{time.time_ns():020d}-{os.getpid()}"
            self._seq = 0
            fd = os.open(
                self.directory / f"{self._set}.lock",
                os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                FILE_MODE,
            )
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._lock_fd = fd
        self._seq += 1
        path = self.directory / f"{self._set}-{self._seq:06d}.spool"
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        fd = os.open(path, flags, FILE_MODE)
        # The new name must survive a crash as surely as what is written in it.
        _fsync_dir(self.directory)
        segment = _Segment(path, 0)
        self._fd, self._current = fd, segment
        self._pending.append(segment)
        return fd, segment

    def _roll(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._current = None, None

    def _cut_back(self, fd: int, segment: _Segment) -> None:
        try:
            os.ftruncate(fd, segment.size)
        except OSError:
            # The segment may end in a torn record: never append after it.
            self._roll()

    def _claim(self, name: str) -> None:
        fd = os.open(
            self.directory / f"{name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # its writer is alive
            return
        if os.fstat(fd).st_nlink == 0:
            os.close(fd)  # another process replayed it and removed it meanwhile
            return
        entries = [entry for entry in os.listdir(self.directory) if _set_of(entry) == name]
        segments = sorted(self.directory / e for e in entries if _SEGMENT.fullmatch(e))
        for entry in entries:
            # A note whose segment was removed just before a crash.
            if _DONE.fullmatch(entry) and entry[: -len(".done")] + ".spool" not in entries:
                (self.directory / entry).unlink()
        self._claims[name] = fd
        if not segments:
            self._release(name, remove=True)
            return
        claimed = [_Segment(p, p.stat().st_size, _read_offset(p)) for p in segments]
        for segment in claimed:
            segment.oldest_ts = self._first_ts(segment)
        log.info("replaying %d spool segments left by %s", len(claimed), name)
        self._pending = sorted(self._pending + claimed, key=lambda s: s.path.name)

    def _release(self, name: str, *, remove: bool) -> None:
        fd = self._claims.pop(name)
        if remove:
            with contextlib.suppress(FileNotFoundError):
                (self.directory / f"{name}.lock").unlink()
        os.close(fd)

    def _read(self, segment: _Segment, limit: int) -> Taken:
        events: list[AuditEvent] = []
        end = segment.offset
        with segment.path.open("rb") as file:
            file.seek(end)
            while len(events) < limit:
                record = file.readline()
                if not record:
                    return Taken(events, segment, end, last=True)
                line = unframe(record)
                if line is None:
                    rest = segment.path.stat().st_size - end
                    log.warning(
                        "spool segment %s: the last %d bytes are a record cut short; skipped",
                        segment.path.name,
                        rest,
                    )
                    return Taken(events, segment, end, last=True)
                events.append(decode(line))
                end += len(record)
            # A full take ends the segment too when nothing follows it.
            return Taken(events, segment, end, last=not file.peek(1))

    def _first_ts(self, segment: _Segment) -> float | None:
        taken = self._read(segment, 1)
        return taken.events[0].ts if taken.events else None

    def _publish(self) -> None:
        # One immutable object replaced at once: /health reads it from the loop.
        pending = self._pending
        self.stats = SpoolStats(
            bytes=sum(s.size - s.offset for s in pending),
            segments=len(pending),
            oldest_ts=pending[0].oldest_ts if pending else None,
        )


def _set_of(name: str) -> str | None:
    match = _SEGMENT.fullmatch(name) or _LOCK.fullmatch(name) or _DONE.fullmatch(name)
    return match.group(1) if match else None


def _done_path(segment: Path) -> Path:
    return segment.with_suffix(".done")


def _note_offset(segment: Path, offset: int) -> None:
    # Not fsync'd: a note lost in a crash only replays batches the sink has.
    fd = os.open(_done_path(segment), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        os.pwrite(fd, b"%0*d" % (_OFFSET_WIDTH, offset), 0)
    finally:
        os.close(fd)


def _read_offset(segment: Path) -> int:
    try:
        written = _done_path(segment).read_bytes()
    except FileNotFoundError:
        return 0
    return int(written) if written.isdigit() and len(written) == _OFFSET_WIDTH else 0


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
