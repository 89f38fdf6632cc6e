"""The audit writer against real files: batching, back-pressure, rotation, failure and close."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from gatewayd.audit.event import AuditEvent
from gatewayd.audit.writer import AuditWriter
from gatewayd.config.schema import AuditConfig, JsonlSinkConfig, OffSinkConfig
from gatewayd.observability.metrics import REGISTRY

MakeEvent = Callable[[int], AuditEvent]
ReadJsonl = Callable[[Path], list[dict[str, Any]]]
WriterFactory = Callable[..., AuditWriter]


def audit_count(outcome: str) -> float:
    """The current value of gatewayd_audit_events_total for one outcome."""
    value = REGISTRY.get_sample_value("gatewayd_audit_events_total", {"outcome": outcome})
    return value or 0.0


def queue_depth_gauge() -> float | None:
    """The current value of gatewayd_audit_queue_depth."""
    return REGISTRY.get_sample_value("gatewayd_audit_queue_depth")


async def wait_until(condition: Callable[[], bool], within: float = 3.0) -> None:
    """Poll until `condition` holds; fail the test if it does not within `within` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {within}s")
        await asyncio.sleep(0.01)


def rotate(path: Path) -> Path:
    """Rename the file away as logrotate does; return where it went."""
    rotated = path.with_suffix(".jsonl.1")
    path.rename(rotated)
    return rotated


def block_directory(path: Path) -> None:
    """Put a plain file where the file's directory was, so it cannot be recreated."""
    shutil.rmtree(path.parent)
    path.parent.write_bytes(b"")


def unblock_directory(path: Path) -> None:
    """Remove the file standing in for the directory."""
    path.parent.unlink()


def request_ids(records: list[dict[str, Any]]) -> list[str]:
    """The request ids of read-back records, in file order."""
    return [record["request_id"] for record in records]


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    """Where the audit file goes, in a directory that does not exist yet."""
    return tmp_path / "logs" / "audit.jsonl"


@pytest.fixture
async def writer_for(log_path: Path) -> AsyncIterator[WriterFactory]:
    """A factory of writers on log_path (overriding config fields); all are closed afterwards."""
    writers: list[AuditWriter] = []

    def make(close_timeout: float = 5.0, **fields: Any) -> AuditWriter:
        fields.setdefault("sink", JsonlSinkConfig(path=log_path))
        config = AuditConfig(**fields)
        writer = AuditWriter(config, close_timeout=close_timeout)
        writers.append(writer)
        return writer

    yield make
    for writer in writers:
        await writer.close()


async def test_events_are_written_as_jsonl_with_every_field(
    writer_for: WriterFactory, log_path: Path, make_event: MakeEvent, read_jsonl: ReadJsonl
) -> None:
    """Each emitted event becomes one JSON line carrying every field, ts as RFC 3339."""
    writer = writer_for(batch_size=10, flush_interval=0.05)
    await writer.start()
    events = [make_event(n) for n in range(3)]
    for event in events:
        await writer.emit(event)
    await writer.close()
    records = read_jsonl(log_path)
    assert len(records) == 3
    for event, record in zip(events, records, strict=True):
        expected = event.as_dict()
        expected["ts"] = record["ts"]
        assert record == expected
        assert list(record) == list(expected)
    assert records[0]["ts"] == "2026-05-28T20:26:40.250000Z"
    assert writer.status()["written"] == 3


async def test_a_full_batch_is_written_without_waiting_for_the_interval(
    writer_for: WriterFactory, log_path: Path, make_event: MakeEvent, read_jsonl: ReadJsonl
) -> None:
    """batch_size queued events are written at once; fewer wait for the interval or close."""
    writer = writer_for(batch_size=3, flush_interval=60)
    await writer.start()
    for n in range(3):
        await writer.emit(make_event(n))
    await wait_until(lambda: len(read_jsonl(log_path)) == 3)
    await writer.emit(make_event(3))
    await writer.emit(make_event(4))
    await asyncio.sleep(0.2)
    assert len(read_jsonl(log_path)) == 3
    assert writer.status()["queue_depth"] == 2
    await writer.close()
    assert request_ids(read_jsonl(log_path)) == [f"req-{n}" for n in range(5)]


async def test_a_partial_batch_is_written_after_the_interval(
    writer_for: WriterFactory, log_path: Path, make_event: MakeEvent, read_jsonl: ReadJsonl
) -> None:
    """A lone event is written within flush_interval, without a full batch or close."""
    writer = writer_for(batch_size=100, flush_interval=0.1)
    await writer.start()
    await writer.emit(make_event(1))
    await wait_until(lambda: writer.status()["written"] == 1, within=1.0)
    assert request_ids(read_jsonl(log_path)) == ["req-1"]
    assert writer.status()["queue_depth"] == 0
    assert queue_depth_gauge() == 0


async def test_a_full_queue_drops_and_counts_without_blocking(
    writer_for: WriterFactory, make_event: MakeEvent, caplog: pytest.LogCaptureFixture
) -> None:
    """Past queue_size, emit returns at once, counts the drop and warns once, naming no data."""
    writer = writer_for(queue_size=5, batch_size=5, on_full="drop")
    dropped_before = audit_count("dropped")
    events = [make_event(n) for n in range(12)]
    for event in events:
        event.client = "client-marker-7f3a"
    with caplog.at_level(logging.WARNING, logger="gatewayd.audit"):
        for event in events:
            await writer.emit(event)
    assert writer.status()["queue_depth"] == 5
    assert writer.status()["dropped"] == 7
    assert audit_count("dropped") - dropped_before == 7
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "client-marker-7f3a" not in caplog.text
    assert "req-" not in caplog.text


async def test_close_writes_everything_queued(
    writer_for: WriterFactory, log_path: Path, make_event: MakeEvent, read_jsonl: ReadJsonl
) -> None:
    """close() flushes every queued event, in order, before returning."""
    writer = writer_for(batch_size=16, flush_interval=60)
    await writer.start()
    for n in range(50):
        await writer.emit(make_event(n))
    await writer.close()
    assert request_ids(read_jsonl(log_path)) == [f"req-{n}" for n in range(50)]
    assert writer.status()["queue_depth"] == 0


async def test_emit_after_close_is_dropped_and_counted(
    writer_for: WriterFactory, log_path: Path, make_event: MakeEvent, read_jsonl: ReadJsonl
) -> None:
    """Once closed, the writer refuses events and counts them as dropped."""
    writer = writer_for()
    await writer.start()
    await writer.close()
    dropped_before = audit_count("dropped")
    await writer.emit(make_event(1))
    assert audit_count("dropped") - dropped_before == 1
    assert read_jsonl(log_path) == []


async def test_close_before_start_counts_queued_events_as_dropped(
    writer_for: WriterFactory, log_path: Path, make_event: MakeEvent, read_jsonl: ReadJsonl
) -> None:
    """Events queued by a writer that never started are not lost silently."""
    writer = writer_for()
    dropped_before = audit_count("dropped")
    await writer.emit(make_event(1))
    await writer.close()
    assert audit_count("dropped") - dropped_before == 1
    assert read_jsonl(log_path) == []


async def test_rotated_file_is_reopened(
    writer_for: WriterFactory, log_path: Path, make_event: MakeEvent, read_jsonl: ReadJsonl
) -> None:
    """After the file is renamed away, new events go to a new file at the configured path."""
    writer = writer_for(batch_size=1, flush_interval=60)
    await writer.start()
    await writer.emit(make_event(1))
    await wait_until(lambda: len(read_jsonl(log_path)) == 1)
    rotated = rotate(log_path)
    await writer.emit(make_event(2))
    await wait_until(lambda: len(read_jsonl(log_path)) == 1)
    await writer.close()
    assert request_ids(read_jsonl(rotated)) == ["req-1"]
    assert request_ids(read_jsonl(log_path)) == ["req-2"]


async def test_failed_writes_are_kept_and_retried(
    writer_for: WriterFactory,
    log_path: Path,
    make_event: MakeEvent,
    read_jsonl: ReadJsonl,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """While the directory is blocked events are held and reported; once it clears, all land."""
    writer = writer_for(batch_size=2, flush_interval=0.05)
    await writer.start()
    await writer.emit(make_event(0))
    await wait_until(lambda: len(read_jsonl(log_path)) == 1)
    dropped_before = audit_count("dropped")
    block_directory(log_path)
    with caplog.at_level(logging.WARNING, logger="gatewayd.audit"):
        for n in range(1, 5):
            await writer.emit(make_event(n))
        await wait_until(lambda: writer.status()["healthy"] is False)
        await asyncio.sleep(0.2)
        status = writer.status()
        assert status["last_error"] == "EEXIST"
        assert status["queue_depth"] == 4
        assert queue_depth_gauge() == 4
        unblock_directory(log_path)
        await wait_until(lambda: writer.status()["healthy"] is True)
    await writer.close()
    assert request_ids(read_jsonl(log_path)) == [f"req-{n}" for n in range(1, 5)]
    assert writer.status()["written"] == 5
    assert audit_count("dropped") == dropped_before
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "EEXIST" in errors[0].getMessage()
    assert "req-" not in caplog.text


async def test_close_gives_up_on_a_broken_disk_and_counts_the_loss(
    writer_for: WriterFactory, log_path: Path, make_event: MakeEvent
) -> None:
    """close() returns after close_timeout when writes keep failing, counting the rest dropped."""
    writer = writer_for(close_timeout=0.3, flush_interval=0.05)
    await writer.start()
    block_directory(log_path)
    dropped_before = audit_count("dropped")
    for n in range(3):
        await writer.emit(make_event(n))
    started = time.monotonic()
    await writer.close()
    assert time.monotonic() - started < 2
    assert audit_count("dropped") - dropped_before == 3
    assert writer.status()["dropped"] == 3
    assert writer.status()["queue_depth"] == 0


async def test_an_unencodable_event_is_dropped_and_the_rest_written(
    writer_for: WriterFactory, log_path: Path, make_event: MakeEvent, read_jsonl: ReadJsonl
) -> None:
    """An event JSON cannot carry is counted as dropped without stopping the writer."""
    writer = writer_for()
    await writer.start()
    bad = make_event(2)
    bad.findings = {"input": {"EMAIL_ADDRESS", "US_SSN"}}
    for event in (make_event(1), bad, make_event(3)):
        await writer.emit(event)
    await writer.close()
    assert request_ids(read_jsonl(log_path)) == ["req-1", "req-3"]
    assert writer.status()["dropped"] == 1


async def test_start_fails_when_the_file_cannot_be_opened(
    writer_for: WriterFactory, log_path: Path
) -> None:
    """A path whose directory is a file makes start() raise, so a bad setup shows at boot."""
    log_path.parent.write_bytes(b"")
    writer = writer_for()
    with pytest.raises(FileExistsError):
        await writer.start()


async def test_sink_off_writes_nothing(
    writer_for: WriterFactory, log_path: Path, make_event: MakeEvent
) -> None:
    """With sink off, start/emit/close touch no file and count nothing."""
    writer = writer_for(sink=OffSinkConfig())
    written_before, dropped_before = audit_count("written"), audit_count("dropped")
    await writer.start()
    for n in range(3):
        await writer.emit(make_event(n))
    await writer.close()
    assert not log_path.parent.exists()
    assert writer.status() == {"sink": "off"}
    assert (audit_count("written"), audit_count("dropped")) == (written_before, dropped_before)
