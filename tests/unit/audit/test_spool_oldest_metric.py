"""gatewayd_audit_spool_oldest_event_timestamp_seconds, which the audit spool alert reads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gatewayd.audit.event import AuditEvent
from gatewayd.audit.writer import AuditWriter
from gatewayd.config.schema import AuditConfig, PostgresSinkConfig, Secret
from gatewayd.observability.metrics import REGISTRY
from tests.fakes.audit_sink import FakeSink
from tests.unit.audit.test_audit_writer import wait_until

OLDEST = "gatewayd_audit_spool_oldest_event_timestamp_seconds"


def oldest() -> float | None:
    """The gauge's current value."""
    return REGISTRY.get_sample_value(OLDEST)


async def test_the_oldest_spooled_event_time_is_exported_until_replay_empties_the_spool(
    tmp_path: Path, make_event: Callable[[int], AuditEvent]
) -> None:
    """While the sink is down the gauge holds the first spooled event's ts; after replay, 0."""
    sink = FakeSink()
    config = AuditConfig(
        sink=PostgresSinkConfig(dsn=Secret("postgresql://unused"), spool_dir=tmp_path / "spool"),
        flush_interval=0.02,
        batch_size=2,
    )
    writer = AuditWriter(config, close_timeout=5.0, sink=sink)
    await writer.start()
    try:
        sink.down = True
        events = [make_event(n) for n in range(5)]
        for event in events:
            await writer.emit(event)
        await wait_until(lambda: writer.status()["spooled"] == 5)
        assert oldest() == events[0].ts
        sink.down = False
        await wait_until(lambda: writer.status()["replayed"] == 5)
        assert oldest() == 0
    finally:
        await writer.close()
