"""The audit writer with a spool and a fake sink: outages, refusals, close, back-pressure."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from gatewayd.audit.event import AuditEvent
from gatewayd.audit.spool import DEAD_LETTER
from gatewayd.audit.writer import AuditWriter
from gatewayd.config.schema import AuditConfig, PostgresSinkConfig, Secret
from tests.fakes.audit_sink import FakeSink
from tests.unit.audit.test_audit_writer import audit_count, wait_until

MakeEvent = Callable[[int], AuditEvent]
WriterFactory = Callable[..., AuditWriter]


@pytest.fixture
def sink() -> FakeSink:
    """A fresh fake sink, up."""
    return FakeSink()


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    """Where the spool goes (created by the writer)."""
    return tmp_path / "spool"


@pytest.fixture
async def writer_for(sink: FakeSink, spool_dir: Path) -> AsyncIterator[WriterFactory]:
    """A factory of started-later writers on `sink` with a spool; all closed afterwards."""
    writers: list[AuditWriter] = []

    def make(close_timeout: float = 5.0, **fields: Any) -> AuditWriter:
        fields.setdefault("flush_interval", 0.02)
        config = AuditConfig(
            sink=PostgresSinkConfig(dsn=Secret("postgresql://unused"), spool_dir=spool_dir),
            **fields,
        )
        writer = AuditWriter(config, close_timeout=close_timeout, sink=sink)
        writers.append(writer)
        return writer

    yield make
    for writer in writers:
        await writer.close()


def spool_files(spool_dir: Path, pattern: str = "*.spool") -> list[str]:
    """The spool files (segments, by default) present now."""
    return sorted(p.name for p in spool_dir.glob(pattern))


def occupy(path: Path) -> None:
    """Put a plain file where a directory should go."""
    path.write_bytes(b"")


async def test_an_outage_spools_then_replays_every_event_once_in_order(
    writer_for: WriterFactory, sink: FakeSink, spool_dir: Path, make_event: MakeEvent
) -> None:
    """While the sink is down events are spooled; once it is back each arrives once, in order."""
    writer = writer_for(batch_size=4)
    await writer.start()
    spooled_before = audit_count("spooled")
    sink.down = True
    for n in range(10):
        await writer.emit(make_event(n))
    await wait_until(lambda: writer.status()["spooled"] == 10)
    status = writer.status()
    assert status["healthy"] is False
    assert status["last_error"] == "connect"
    assert status["spool"]["bytes"] > 0  # type: ignore[index]
    assert status["spool"]["oldest_event_age_s"] is not None  # type: ignore[index]
    assert spool_files(spool_dir)
    assert audit_count("spooled") - spooled_before == 10
    for n in range(10, 15):
        await writer.emit(make_event(n))
    sink.down = False
    await wait_until(lambda: writer.status()["replayed"] == 15)
    assert sink.request_ids() == [f"req-{n}" for n in range(15)]
    assert writer.status()["healthy"] is True
    assert spool_files(spool_dir) == []
    await writer.emit(make_event(15))
    await wait_until(lambda: writer.status()["written"] == 1)
    assert writer.status()["spool"] == {  # type: ignore[comparison-overlap]
        "bytes": 0,
        "segments": 0,
        "oldest_event_age_s": None,
        "path": str(spool_dir),
    }


async def test_a_refused_batch_is_written_row_by_row_and_the_poison_dead_lettered(
    writer_for: WriterFactory,
    sink: FakeSink,
    spool_dir: Path,
    make_event: MakeEvent,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A rejected batch is retried one by one; the row refused again lands in dead-letter.jsonl."""
    writer = writer_for(batch_size=5, flush_interval=60)
    await writer.start()
    sink.poison = {"req-2"}
    events = [make_event(n) for n in range(5)]
    with caplog.at_level(logging.ERROR, logger="gatewayd.audit"):
        for event in events:
            await writer.emit(event)
        await wait_until(lambda: writer.status()["dead_lettered"] == 1)
    assert sink.request_ids() == ["req-0", "req-1", "req-3", "req-4"]
    assert writer.status()["written"] == 4
    (line,) = (spool_dir / DEAD_LETTER).read_bytes().splitlines()
    record = orjson.loads(line)
    assert record["event_id"] == events[2].event_id
    assert record["refused"] == "SQLSTATE 23514"
    assert events[2].event_id in caplog.text
    assert "SQLSTATE 23514" in caplog.text


async def test_close_spools_what_the_sink_will_not_take(
    writer_for: WriterFactory, sink: FakeSink, spool_dir: Path, make_event: MakeEvent
) -> None:
    """SIGTERM's close with the sink down loses nothing: the queue goes to the spool."""
    writer = writer_for(batch_size=100, flush_interval=60)
    await writer.start()
    sink.down = True
    for n in range(7):
        await writer.emit(make_event(n))
    dropped_before = audit_count("dropped")
    await writer.close()
    assert writer.status()["spooled"] == 7
    assert audit_count("dropped") == dropped_before
    assert spool_files(spool_dir)


async def test_close_spools_past_its_deadline_when_the_sink_hangs(
    writer_for: WriterFactory, sink: FakeSink, make_event: MakeEvent
) -> None:
    """A write that never returns cannot keep close() past close_timeout, nor lose the events."""
    writer = writer_for(close_timeout=0.3, batch_size=100, flush_interval=60)
    await writer.start()
    sink.hang = True
    for n in range(3):
        await writer.emit(make_event(n))
    started = time.monotonic()
    await writer.close()
    assert time.monotonic() - started < 2
    assert writer.status()["spooled"] == 3
    assert writer.status()["dropped"] == 0


class SlowSink(FakeSink):
    """A sink whose every write takes 50 ms, as a database round trip does."""

    async def write(self, batch: Sequence[AuditEvent]) -> int:
        """Store the batch after a pause."""
        await asyncio.sleep(0.05)
        return await super().write(batch)


async def test_events_arriving_during_a_write_wait_for_a_full_batch_or_the_interval(
    spool_dir: Path, make_event: MakeEvent
) -> None:
    """What arrives while a batch is stored is not written a few at a time behind it."""
    sink = SlowSink()
    config = AuditConfig(
        sink=PostgresSinkConfig(dsn=Secret("postgresql://unused"), spool_dir=spool_dir),
        batch_size=4,
        flush_interval=0.4,
    )
    writer = AuditWriter(config, sink=sink)
    await writer.start()
    for n in range(4):
        await writer.emit(make_event(n))
    await asyncio.sleep(0.01)
    for n in range(4, 6):
        await writer.emit(make_event(n))
    await asyncio.sleep(0.15)
    assert sink.calls == [["req-0", "req-1", "req-2", "req-3"]]
    await wait_until(lambda: len(sink.calls) == 2, within=1.0)
    assert sink.calls[1] == ["req-4", "req-5"]
    await writer.close()
    assert sink.request_ids() == [f"req-{n}" for n in range(6)]


async def test_a_spool_left_by_a_dead_writer_is_replayed_at_start(
    writer_for: WriterFactory, sink: FakeSink, spool_dir: Path, make_event: MakeEvent
) -> None:
    """Events a previous run spooled are stored by the next one, then their files removed."""
    first = writer_for(batch_size=10, flush_interval=60)
    await first.start()
    sink.down = True
    for n in range(6):
        await first.emit(make_event(n))
    await first.close()
    sink.down = False
    second = writer_for(batch_size=4)
    await second.start()
    # A segment's file goes once its last batch is stored, just after the count.
    await wait_until(
        lambda: (
            second.status()["replayed"] == 6
            and spool_files(spool_dir) == []
            and spool_files(spool_dir, "*.lock") == []
        )
    )
    assert sink.request_ids() == [f"req-{n}" for n in range(6)]


async def test_block_waits_for_room_instead_of_dropping(
    writer_for: WriterFactory, sink: FakeSink, make_event: MakeEvent
) -> None:
    """With on_full block, a request finding the queue full waits until the writer makes room."""
    writer = writer_for(
        close_timeout=0.3, queue_size=2, batch_size=2, flush_interval=60, block_timeout=5
    )
    await writer.start()
    sink.hang = True
    await writer.emit(make_event(0))
    await writer.emit(make_event(1))
    await wait_until(lambda: sink.calls == [["req-0", "req-1"]])
    await writer.emit(make_event(2))
    await writer.emit(make_event(3))
    blocked = asyncio.create_task(writer.emit(make_event(4)))
    await asyncio.sleep(0.1)
    assert not blocked.done()
    # The hung write is abandoned at close's deadline; what waited is spooled with the rest.
    await writer.close()
    await blocked
    assert (writer.status()["spooled"], writer.status()["dropped"]) == (5, 0)


async def test_a_stuck_writer_makes_block_drop_after_block_timeout(
    writer_for: WriterFactory, sink: FakeSink, make_event: MakeEvent
) -> None:
    """A writer that makes no room within block_timeout drops, then drops at once until it moves."""
    writer = writer_for(
        close_timeout=0.2, queue_size=1, batch_size=1, flush_interval=60, block_timeout=0.2
    )
    await writer.start()
    sink.hang = True
    await writer.emit(make_event(0))
    await wait_until(lambda: bool(sink.calls))
    await writer.emit(make_event(1))
    started = time.monotonic()
    await writer.emit(make_event(2))
    assert 0.15 < time.monotonic() - started < 1
    started = time.monotonic()
    await writer.emit(make_event(3))
    assert time.monotonic() - started < 0.05
    assert writer.status()["dropped"] == 2


async def test_readiness_of_the_spool_directory_is_checked_at_start(
    writer_for: WriterFactory, spool_dir: Path
) -> None:
    """A spool directory that cannot be made stops the start, as an unopenable file does."""
    occupy(spool_dir)
    writer = writer_for()
    with pytest.raises(FileExistsError):
        await writer.start()
