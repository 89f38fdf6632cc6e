"""The `gatewayd_audit` table: its columns, creating it, its monthly partitions,
and removing rows past the retention.

DDL takes a transaction-scoped advisory lock keyed on the table's schema and
name, so workers (and several gatewayd hosts) starting together never race
on CREATE ... IF NOT EXISTS, which is not safe against a concurrent twin.

The table lives in the first schema of the connection's search_path; a DSN
can choose it (`?search_path=audit`), as the tests do.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, TypeAlias

import asyncpg

from gatewayd.audit.event import COLUMNS

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Conn: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]

log = logging.getLogger(__name__)

TABLE = "gatewayd_audit"
# Each connection's own landing table for a batch the table may hold in part:
# ON CONFLICT works on INSERT only, not on COPY.
INCOMING = "gatewayd_audit_incoming"

# One entry per AuditEvent field, in column order (a unit test holds them equal).
_TYPES = {
    "event_id": "uuid NOT NULL",
    "ts": "timestamptz NOT NULL",
    "request_id": "text NOT NULL",
    "client": "text NOT NULL",
    "method": "text NOT NULL",
    "path": "text NOT NULL",
    "route": "text",
    "upstream": "text",
    "model": "text",
    "stream": "boolean NOT NULL",
    "status": "smallint NOT NULL",
    "duration_ms": "double precision NOT NULL",
    "upstream_ms": "double precision",
    "attempts": "integer NOT NULL",
    "bytes_in": "bigint NOT NULL",
    "bytes_out": "bigint NOT NULL",
    "prompt_tokens": "integer",
    "completion_tokens": "integer",
    "policy": "text",
    "action": "text",
    "findings": "jsonb NOT NULL",
    "error": "text",
    "ratelimit": "text",
}
_COLUMNS_SQL = ",\n    ".join(f"{name} {_TYPES[name]}" for name in COLUMNS)
_NAMES = ", ".join(COLUMNS)
# Columns added after the first release of the table.
_ADDED = ("ratelimit",)
_ADD_COLUMNS = f"ALTER TABLE {TABLE} " + ", ".join(
    f"ADD COLUMN IF NOT EXISTS {name} {_TYPES[name]}" for name in _ADDED
)

CREATE_INCOMING = (
    f"CREATE TEMP TABLE IF NOT EXISTS {INCOMING} (\n    {_COLUMNS_SQL}\n) ON COMMIT DELETE ROWS"
)
# A replayed event is skipped, not doubled: its event_id (and ts) are there already.
INSERT = f"INSERT INTO {TABLE} ({_NAMES}) SELECT {_NAMES} FROM {INCOMING} ON CONFLICT DO NOTHING"  # noqa: S608 - constants only

_LOCK = f"SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.{TABLE}'))"
_PARTITION = re.compile(TABLE + r"_y(\d{4})m(\d{2})")
# Rows an unpartitioned retention pass deletes per statement, so it never
# holds many row locks or a long transaction.
DELETE_BATCH = 5000


Month = tuple[int, int]


def months_of(stamps: Iterable[datetime]) -> set[Month]:
    """The (year, month) of each time, in UTC."""
    return {(stamp.year, stamp.month) for stamp in stamps}


def month_after(month: Month) -> Month:
    """The month following `month`."""
    year, number = month
    return (year + 1, 1) if number == 12 else (year, number + 1)


def _start(month: Month) -> datetime:
    return datetime(month[0], month[1], 1, tzinfo=UTC)


def partition_name(month: Month) -> str:
    """The name gatewayd gives the partition of `month`."""
    return f"{TABLE}_y{month[0]:04d}m{month[1]:02d}"


async def create_table(conn: Conn, *, partitioned: bool) -> bool:
    """Create the table and its indexes if missing; whether the table is partitioned.

    An existing table is taken as it is: gatewayd never converts one, and
    says so when audit.partition disagrees with it.
    """
    key = "event_id, ts" if partitioned else "event_id"
    scheme = " PARTITION BY RANGE (ts)" if partitioned else ""
    async with conn.transaction():
        await conn.execute(_LOCK)
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (\n    {_COLUMNS_SQL},\n"
            f"    PRIMARY KEY ({key})\n){scheme}"
        )
        # A table an earlier version made lacks the columns added since; they
        # are all nullable, so adding them never rewrites the table.
        await conn.execute(_ADD_COLUMNS)
        await conn.execute(f"CREATE INDEX IF NOT EXISTS {TABLE}_ts_idx ON {TABLE} (ts)")
        await conn.execute(
            f"CREATE INDEX IF NOT EXISTS {TABLE}_client_ts_idx ON {TABLE} (client, ts)"
        )
        actual: bool = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_partitioned_table"  # noqa: S608 - constants only
            f" WHERE partrelid = '{TABLE}'::regclass)"
        )
    if actual != partitioned:
        log.warning(
            "table %s is %s; audit.partition says %s: keeping the table as it is",
            TABLE,
            "partitioned" if actual else "not partitioned",
            "monthly" if partitioned else "none",
        )
    return actual


async def partitions(conn: Conn) -> set[Month]:
    """The months that have a partition named as gatewayd names them."""
    names = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"  # noqa: S608
        f" WHERE i.inhparent = '{TABLE}'::regclass"
    )
    found = (_PARTITION.fullmatch(row["relname"]) for row in names)
    return {(int(m.group(1)), int(m.group(2))) for m in found if m}


async def create_partitions(conn: Conn, months: Iterable[Month]) -> None:
    """Create the monthly partitions of `months` if missing."""
    async with conn.transaction():
        await conn.execute(_LOCK)
        for month in sorted(months):
            # Bounds are built from integers, never from input: no injection.
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {partition_name(month)} PARTITION OF {TABLE}"
                f" FOR VALUES FROM ('{_start(month).isoformat()}')"
                f" TO ('{_start(month_after(month)).isoformat()}')"
            )


async def drop_partitions_before(conn: Conn, cutoff: datetime) -> list[Month]:
    """Drop each partition whose every row is older than `cutoff`; their months."""
    dropped: list[Month] = []
    for month in sorted(await partitions(conn)):
        if _start(month_after(month)) > cutoff:
            continue
        async with conn.transaction():
            await conn.execute(_LOCK)
            await conn.execute(f"DROP TABLE IF EXISTS {partition_name(month)}")
        dropped.append(month)
    return dropped


async def delete_before(conn: Conn, cutoff: datetime, pause: float) -> int:
    """Delete rows older than `cutoff`, DELETE_BATCH at a time, `pause` s apart; how many."""
    total = 0
    while True:
        status = await conn.execute(
            f"DELETE FROM {TABLE} WHERE ctid = ANY(ARRAY("  # noqa: S608 - constants only
            f"SELECT ctid FROM {TABLE} WHERE ts < $1 LIMIT {DELETE_BATCH}))",
            cutoff,
        )
        deleted = int(status.rsplit(" ", 1)[1])
        total += deleted
        if deleted < DELETE_BATCH:
            return total
        # Leave room for the writer's batches between two deletes.
        await asyncio.sleep(pause)


def cutoff_for(retention: float, now: datetime | None = None) -> datetime:
    """The oldest time a row may have to be kept."""
    return (now or datetime.now(UTC)) - timedelta(seconds=retention)
