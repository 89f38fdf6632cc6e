"""The PostgreSQL audit sink against the real server on loopback, through the gateway."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from unittest import mock

import aiohttp
import asyncpg
import orjson
import pytest

from gatewayd.app import AUDIT
from gatewayd.audit import table
from gatewayd.audit.event import COLUMNS, AuditEvent
from gatewayd.audit.jsonl import encode
from gatewayd.audit.postgres import PostgresSink
from gatewayd.audit.spool import DEAD_LETTER, Spool
from gatewayd.audit.writer import AuditWriter
from gatewayd.config.schema import AuditConfig, PostgresSinkConfig, Secret
from tests.conftest import AuditDatabase, FakeUpstream, free_port
from tests.fakes.tcp_proxy import TcpProxy
from tests.harness import Gateway, running_gateway, write_config

CHAT = {"model": "gpt-fake", "messages": [{"role": "user", "content": "hello there"}]}


def _config(upstream: str, dsn: str, spool: Path, extra: str = "") -> str:
    return f"""
        logging:
          level: warning
        upstreams:
          fake:
            url: {upstream}
        routes:
          v1:
            prefix: /v1/
            upstream: fake
        audit:
          sink: postgres
          postgres_dsn: "{dsn}"
          spool_dir: {spool}
          batch_size: 16
          flush_interval: 50ms
          write_timeout: 1s
          {extra}
    """


async def _chat(client: aiohttp.ClientSession, gw: Gateway) -> str:
    """One chat completion through the gateway; the request id it was answered with."""
    async with client.post(f"{gw.url}/v1/chat/completions", json=CHAT) as resp:
        assert resp.status == 200
        return resp.headers["X-Request-Id"]


async def _until(condition: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within}s")
        await asyncio.sleep(0.05)


def _sink(dsn: str, spool: Path, **fields: object) -> PostgresSinkConfig:
    return PostgresSinkConfig(dsn=Secret(dsn), spool_dir=spool, write_timeout=1.0, **fields)  # type: ignore[arg-type]


def _event(number: int, **fields: object) -> AuditEvent:
    return AuditEvent(request_id=f"req-{number}", client="ip:127.0.0.1", method="POST",
                      path="/v1/chat/completions", status=200, **fields)  # type: ignore[arg-type]  # fmt: skip


async def test_the_table_and_its_indexes_are_created_with_every_column(
    audit_db: AuditDatabase, tmp_path: Path
) -> None:
    """The sink creates gatewayd_audit with DESIGN's columns, a unique event_id, jsonb findings."""
    sink = PostgresSink(_sink(audit_db.dsn, tmp_path))
    await sink.open()
    await sink.maintain()
    await sink.close()
    columns = await audit_db.conn.fetch(
        "SELECT column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = $1 AND table_name = 'gatewayd_audit' ORDER BY ordinal_position",
        audit_db.schema,
    )
    assert [c["column_name"] for c in columns] == list(COLUMNS)
    types = {c["column_name"]: c["data_type"] for c in columns}
    assert (types["event_id"], types["ts"], types["findings"]) == (
        "uuid",
        "timestamp with time zone",
        "jsonb",
    )
    indexes = {
        row["indexdef"].split(" USING ")[1]
        for row in await audit_db.conn.fetch(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = $1", audit_db.schema
        )
    }
    assert indexes == {"btree (event_id)", "btree (ts)", "btree (client, ts)"}


async def test_monthly_partitions_exist_for_this_month_and_the_next(
    audit_db: AuditDatabase, tmp_path: Path
) -> None:
    """partition: monthly makes a range-partitioned table with next month's partition ready."""
    sink = PostgresSink(_sink(audit_db.dsn, tmp_path, partition="monthly"))
    await sink.open()
    await sink.maintain()
    assert await sink.write(
        [_event(1), _event(2, ts=datetime(2024, 2, 10, tzinfo=UTC).timestamp())]
    )
    await sink.close()
    names = {
        row["relname"]
        for row in await audit_db.conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'gatewayd_audit'::regclass"
        )
    }
    now = datetime.now(UTC)
    this = (now.year, now.month)
    assert names == {
        table.partition_name(this),
        table.partition_name(table.month_after(this)),
        table.partition_name((2024, 2)),
    }
    assert len(await audit_db.rows()) == 2


async def test_n_concurrent_requests_give_exactly_n_rows(
    audit_db: AuditDatabase, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """200 requests at once through the gateway leave 200 rows, one per request id."""
    config = write_config(tmp_path, _config(fake_upstream.url, audit_db.dsn, tmp_path / "spool"))
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        ids = await asyncio.gather(*(_chat(client, gw) for _ in range(200)))
    rows = await audit_db.rows("request_id, status, route, findings")
    assert sorted(r["request_id"] for r in rows) == sorted(ids)
    assert {(r["status"], r["route"], r["findings"]) for r in rows} == {(200, "v1", "{}")}


async def test_a_database_cut_while_requests_flow_loses_and_doubles_nothing(
    audit_db: AuditDatabase, pg_proxy: TcpProxy, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Requests before, during and after an outage each leave exactly one row once it is back."""
    spool = tmp_path / "spool"
    config = write_config(tmp_path, _config(fake_upstream.url, audit_db.via(pg_proxy.port), spool))
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        writer = gw.app[AUDIT]
        ids = [await _chat(client, gw) for _ in range(20)]
        await _until(_count_is(audit_db, 20))
        await pg_proxy.cut()
        ids += await asyncio.gather(*(_chat(client, gw) for _ in range(60)))
        await _until(_status_is(writer, "spooled", 60))
        async with client.get(f"{gw.url}/health/ready") as resp:
            assert resp.status == 200
        async with client.get(f"{gw.url}/health/detailed") as resp:
            audit = (await resp.json())["audit"]
        assert audit["healthy"] is False
        assert audit["spool"]["bytes"] > 0
        await pg_proxy.restore()
        ids += [await _chat(client, gw) for _ in range(20)]
        await _until(_count_is(audit_db, 100), within=20)
    rows = await audit_db.rows("event_id, request_id")
    assert sorted(r["request_id"] for r in rows) == sorted(ids)
    assert len({r["event_id"] for r in rows}) == 100
    assert list(spool.glob("*.spool")) == []


async def test_a_poisoned_row_is_dead_lettered_and_the_rest_of_its_batch_written(
    audit_db: AuditDatabase, tmp_path: Path
) -> None:
    """A row PostgreSQL refuses (a NUL in text) goes to the dead-letter file; its batch lands."""
    spool = tmp_path / "spool"
    config = AuditConfig(sink=_sink(audit_db.dsn, spool), batch_size=10, flush_interval=60)
    writer = AuditWriter(config)
    await writer.start()
    events = [_event(n) for n in range(10)]
    events[4].path = "/v1/\x00chat"
    for event in events:
        await writer.emit(event)
    await writer.close()
    rows = await audit_db.rows("request_id")
    assert sorted(r["request_id"] for r in rows) == sorted(f"req-{n}" for n in range(10) if n != 4)
    (line,) = (spool / DEAD_LETTER).read_bytes().splitlines()
    record = orjson.loads(line)
    assert (record["event_id"], record["refused"]) == (events[4].event_id, "SQLSTATE 22021")
    assert writer.status()["dead_lettered"] == 1


async def test_a_batch_stored_twice_leaves_one_row_per_event(
    audit_db: AuditDatabase, tmp_path: Path
) -> None:
    """Writing a batch again (a replay after a lost commit ack) adds no row."""
    sink = PostgresSink(_sink(audit_db.dsn, tmp_path))
    await sink.open()
    batch = [_event(n, findings={"input": {"EMAIL_ADDRESS": 2}}) for n in range(50)]
    assert await sink.write(batch[:30]) == 30
    assert await sink.write(batch) == 50
    assert await sink.write(batch[10:]) == 40
    await sink.close()
    rows = await audit_db.rows("event_id, findings")
    assert sorted(r["event_id"] for r in rows) == sorted(uuid.UUID(e.event_id) for e in batch)
    assert orjson.loads(rows[0]["findings"]) == {"input": {"EMAIL_ADDRESS": 2}}


async def test_a_spooled_batch_whose_commit_landed_is_replayed_without_doubling(
    audit_db: AuditDatabase, tmp_path: Path
) -> None:
    """A batch stored, then spooled as its acknowledgement was lost, leaves one row per event."""
    spool_dir = tmp_path / "spool"
    events = [_event(n) for n in range(40)]
    sink = PostgresSink(_sink(audit_db.dsn, spool_dir))
    await sink.open()
    await sink.write(events[:25])
    await sink.close()
    spool = Spool(spool_dir)
    spool.open()
    spool.append(events)
    spool.close()
    config = AuditConfig(sink=_sink(audit_db.dsn, spool_dir), batch_size=16, flush_interval=0.05)
    writer = AuditWriter(config)
    await writer.start()
    await _until(_status_is(writer, "replayed", 40))
    await writer.close()
    rows = await audit_db.rows("request_id")
    assert sorted(r["request_id"] for r in rows) == sorted(e.request_id for e in events)
    assert writer.status()["dead_lettered"] == 0


async def test_retention_drops_old_partitions(audit_db: AuditDatabase, tmp_path: Path) -> None:
    """With partition monthly, partitions wholly past the retention are dropped, others kept."""
    sink = PostgresSink(_sink(audit_db.dsn, tmp_path, partition="monthly", retention=90 * 86400.0))
    await sink.open()
    old = datetime(2020, 1, 15, tzinfo=UTC).timestamp()
    await sink.write([_event(1, ts=old), _event(2)])
    await sink.maintain()
    await sink.close()
    assert [r["request_id"] for r in await audit_db.rows("request_id")] == ["req-2"]
    names = await audit_db.conn.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = $1", audit_db.schema
    )
    assert table.partition_name((2020, 1)) not in {r["tablename"] for r in names}


async def test_retention_deletes_old_rows_in_small_batches(
    audit_db: AuditDatabase, tmp_path: Path
) -> None:
    """Unpartitioned, rows older than the retention are deleted a batch at a time, newer kept."""
    sink = PostgresSink(_sink(audit_db.dsn, tmp_path, retention=3600.0))
    await sink.open()
    old = time.time() - 7200
    await sink.write([_event(n, ts=old + n) for n in range(25)] + [_event(99)])
    with mock.patch.object(table, "DELETE_BATCH", 10):
        await sink.maintain()
    await sink.close()
    assert [r["request_id"] for r in await audit_db.rows("request_id")] == ["req-99"]


async def test_gateway_starts_and_is_ready_with_the_database_down(
    audit_db: AuditDatabase, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """An unreachable audit database neither stops the start nor fails readiness; events spool."""
    dead = audit_db.via(free_port())
    config = write_config(tmp_path, _config(fake_upstream.url, dead, tmp_path / "spool"))
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        await _chat(client, gw)
        await _until(_status_is(gw.app[AUDIT], "spooled", 1))
        async with client.get(f"{gw.url}/health/ready") as resp:
            assert resp.status == 200
        async with client.get(f"{gw.url}/health/detailed") as resp:
            audit = (await resp.json())["audit"]
    assert audit["sink"] == "postgres"
    assert audit["healthy"] is False
    assert audit["last_error"] == "connect"
    assert audit["spool"]["segments"] == 1
    assert "postgres@" not in str(audit)


def _count_is(db: AuditDatabase, count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        try:
            rows = await db.conn.fetchval("SELECT count(*) FROM gatewayd_audit")
        except asyncpg.UndefinedTableError:
            # The sink creates its table once it first reaches the database.
            return False
        return bool(rows == count)

    return check


def _status_is(writer: AuditWriter, key: str, count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return writer.status()[key] == count

    return check


async def _gatewayd(*args: str) -> tuple[int, bytes, bytes]:
    """Run the gatewayd command; its exit status, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gatewayd", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out, err


def _sink_config(tmp_path: Path, dsn: str) -> Path:
    path = tmp_path / "gatewayd.yaml"
    path.write_text(
        f'audit:\n  sink: postgres\n  postgres_dsn: "{dsn}"\n  spool_dir: {tmp_path}/spool\n'
    )
    return path


async def test_audit_tail_prints_the_tables_last_rows_as_json_lines(
    audit_db: AuditDatabase, tmp_path: Path
) -> None:
    """`gatewayd audit tail -n 2` prints the newest two rows, oldest first, as the file would."""
    sink = PostgresSink(_sink(audit_db.dsn, tmp_path))
    await sink.open()
    events = [
        _event(n, ts=1_780_000_000.0 + n, findings={"input": {"US_SSN": 1}}) for n in range(5)
    ]
    await sink.write(events)
    await sink.close()
    status, out, err = await _gatewayd(
        "-c", str(_sink_config(tmp_path, audit_db.dsn)), "audit", "tail", "-n", "2"
    )
    assert (status, err) == (0, b"")
    assert out.splitlines() == [encode(events[3]).rstrip(), encode(events[4]).rstrip()]


async def test_audit_replay_drains_the_spool_by_hand(
    audit_db: AuditDatabase, tmp_path: Path
) -> None:
    """Events spooled while the database was away are stored by `gatewayd audit replay`."""
    dead = AuditConfig(sink=_sink(audit_db.via(free_port()), tmp_path / "spool"), flush_interval=60)
    writer = AuditWriter(dead)
    await writer.start()
    for n in range(30):
        await writer.emit(_event(n))
    await writer.close()
    assert writer.status()["spooled"] == 30
    status, out, _ = await _gatewayd(
        "-c", str(_sink_config(tmp_path, audit_db.dsn)), "audit", "replay"
    )
    assert status == 0
    assert out.startswith(b"replayed 30 events")
    assert len(await audit_db.rows()) == 30
    assert list((tmp_path / "spool").glob("*.spool")) == []
