"""The JSONL file: encoding, file modes, appends, rotation and partial writes, on real files."""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from gatewayd.audit.event import AuditEvent
from gatewayd.audit.jsonl import Chunk, JsonlFile, encode, encode_batch, error_kind, rfc3339

FIELDS = [f.name for f in dataclasses.fields(AuditEvent)]


@pytest.fixture
def umask_022() -> Iterator[None]:
    """Run with the usual umask so created modes are exactly what the code asks for."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture
def audit_file(tmp_path: Path) -> Iterator[JsonlFile]:
    """An opened JsonlFile at tmp_path/logs/audit.jsonl, closed afterwards."""
    sink = JsonlFile(tmp_path / "logs" / "audit.jsonl")
    sink.open()
    yield sink
    sink.close()


def chunk_of(*lines: bytes) -> Chunk:
    """A chunk holding the given newline-terminated lines."""
    return Chunk(b"".join(lines), len(lines))


def test_rfc3339_always_has_six_fraction_digits_and_z() -> None:
    """Whole seconds still carry .000000, and the zone is written Z."""
    assert rfc3339(0.0) == "1970-01-01T00:00:00.000000Z"
    assert rfc3339(1.5) == "1970-01-01T00:00:01.500000Z"
    assert rfc3339(1.9999999) == "1970-01-01T00:00:02.000000Z"


def test_rfc3339_round_trips_to_the_microsecond() -> None:
    """Parsing the string gives back the same instant within a microsecond."""
    ts = 1_780_000_000.123456
    parsed = datetime.fromisoformat(rfc3339(ts))
    assert parsed.tzinfo == UTC
    assert abs(parsed.timestamp() - ts) < 1e-6


def test_encode_is_one_line_with_every_field_in_column_order(
    make_event: Callable[[int], AuditEvent],
) -> None:
    """An encoded event is one newline-terminated JSON object with as_dict's keys and values."""
    event = make_event(1)
    line = encode(event)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    record: dict[str, Any] = orjson.loads(line)
    assert list(record) == FIELDS
    expected = event.as_dict()
    expected["ts"] = rfc3339(event.ts)
    assert record == expected


def test_encode_batch_skips_events_json_cannot_carry(
    make_event: Callable[[int], AuditEvent],
) -> None:
    """An event holding a non-JSON value is skipped and counted; its neighbours are kept."""
    bad = make_event(2)
    bad.findings = {"input": {"EMAIL_ADDRESS", "PHONE_NUMBER"}}
    chunk, skipped = encode_batch([make_event(1), bad, make_event(3)])
    assert skipped == 1
    assert chunk is not None
    assert chunk.events == 2
    ids = [orjson.loads(line)["request_id"] for line in chunk.data.splitlines()]
    assert ids == ["req-1", "req-3"]


def test_chunk_reports_each_written_line_once() -> None:
    """newly_written counts lines as the offset passes their newline, never twice."""
    chunk = chunk_of(b"aa\n", b"bb\n", b"cc\n")
    chunk.offset = 4
    assert chunk.newly_written() == 1
    assert chunk.unwritten() == 2
    assert chunk.newly_written() == 0
    chunk.offset = 9
    assert chunk.newly_written() == 2
    assert chunk.done


@pytest.mark.usefixtures("umask_022")
def test_open_creates_directory_0750_and_file_0640(tmp_path: Path) -> None:
    """A missing parent directory is created 0750 and the file 0640."""
    path = tmp_path / "logs" / "audit.jsonl"
    sink = JsonlFile(path)
    sink.open()
    sink.close()
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o750
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_write_appends_to_what_is_already_there(tmp_path: Path) -> None:
    """Reopening an existing file appends after its lines instead of truncating."""
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"old\n")
    sink = JsonlFile(path)
    sink.open()
    sink.write(chunk_of(b"new\n"))
    sink.close()
    assert path.read_bytes() == b"old\nnew\n"


def test_renamed_file_is_replaced_by_a_new_one(audit_file: JsonlFile) -> None:
    """After logrotate renames the file, the next write creates a fresh file at the path."""
    audit_file.write(chunk_of(b"first\n"))
    rotated = audit_file.path.with_suffix(".jsonl.1")
    audit_file.path.rename(rotated)
    audit_file.write(chunk_of(b"second\n"))
    assert rotated.read_bytes() == b"first\n"
    assert audit_file.path.read_bytes() == b"second\n"


def test_removed_file_is_recreated(audit_file: JsonlFile) -> None:
    """A deleted file is recreated rather than written into the unlinked inode."""
    audit_file.write(chunk_of(b"first\n"))
    audit_file.path.unlink()
    audit_file.write(chunk_of(b"second\n"))
    assert audit_file.path.read_bytes() == b"second\n"


def test_partial_line_continues_in_the_same_file(audit_file: JsonlFile) -> None:
    """A chunk cut short mid-line resumes where it stopped while the file is unchanged."""
    chunk = chunk_of(b"one\n", b"two\n")
    with audit_file.path.open("ab") as torn:
        torn.write(b"one\ntw")
    chunk.offset = 6
    audit_file.write(chunk)
    assert audit_file.path.read_bytes() == b"one\ntwo\n"


def test_partial_line_is_rewritten_whole_in_a_new_file(audit_file: JsonlFile) -> None:
    """After a rotation, the line a failed write cut short is written whole to the new file."""
    chunk = chunk_of(b"one\n", b"two\n")
    chunk.offset = 6
    audit_file.path.rename(audit_file.path.with_suffix(".jsonl.1"))
    audit_file.write(chunk)
    assert audit_file.path.read_bytes() == b"two\n"
    assert chunk.done


def test_failed_write_keeps_the_chunk_for_a_retry(audit_file: JsonlFile) -> None:
    """When the directory cannot be recreated the write raises, the offset stays, a retry works."""
    directory = audit_file.path.parent
    shutil.rmtree(directory)
    directory.write_bytes(b"")
    chunk = chunk_of(b"kept\n")
    with pytest.raises(FileExistsError) as caught:
        audit_file.write(chunk)
    assert error_kind(caught.value) == "EEXIST"
    assert chunk.offset == 0
    directory.unlink()
    audit_file.write(chunk)
    assert audit_file.path.read_bytes() == b"kept\n"
