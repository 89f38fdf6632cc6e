"""The PostgreSQL audit sink: batches through binary COPY, over an asyncpg pool.

A batch is one binary COPY straight into `gatewayd_audit`: one statement,
committed on its own. COPY is all or nothing, so a batch holding an event
stored already (a replay after a commit whose acknowledgement was lost) fails
whole with a unique violation and stores nothing; only then is it COPY'd into
a per-connection temporary table and moved over with INSERT ... ON CONFLICT
DO NOTHING in one transaction, so a replay never doubles a row and a fresh
batch never pays for the check. The database may be down when
gatewayd starts: the sink opens anyway, and the writer spools until the
first write succeeds (readiness never depends on the audit database).

asyncpg's errors end here, translated into gatewayd's own (`translate`):
a refused value or constraint (SQLSTATE classes 22 and 23) rejects the
batch, anything else makes the sink unavailable. Only fixed words (a
SQLSTATE, "connect", "timeout") leave this module, never a server message,
which can quote a value, nor the DSN, which holds the password.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import orjson

from gatewayd.audit import table
from gatewayd.audit.event import COLUMNS, AuditEvent
from gatewayd.config.schema import PostgresSinkConfig
from gatewayd.errors import AuditBatchRejected, AuditSinkError, AuditSinkUnavailable

log = logging.getLogger(__name__)

# Partitions ahead and rows past the retention are seen to this often.
MAINTAIN_EVERY = 3600.0
# Two connections: the writer's, and one for maintenance (or a replay).
POOL_SIZE = 2
_TS = COLUMNS.index("ts")
_FINDINGS = COLUMNS.index("findings")
# Seconds between two retention deletes on an unpartitioned table.
_DELETE_PAUSE = 0.1


def translate(exc: BaseException) -> AuditSinkError:
    """The gatewayd error for an asyncpg (or socket) failure; see the module docstring."""
    if isinstance(exc, asyncpg.PostgresError):
        state = exc.sqlstate or "unknown"
        kind = f"SQLSTATE {state}"
        if state[:2] in ("22", "23"):
            return AuditBatchRejected(kind)
        return AuditSinkUnavailable(kind)
    if isinstance(exc, asyncpg.InterfaceError) and isinstance(exc, ValueError):
        # asyncpg's own DataError: a value it cannot encode for the column.
        return AuditBatchRejected("invalid_value")
    if isinstance(exc, TimeoutError):
        return AuditSinkUnavailable("timeout")
    if isinstance(exc, OSError):
        return AuditSinkUnavailable("connect")
    return AuditSinkUnavailable(type(exc).__name__)


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Re-raise asyncpg, socket and timeout errors as gatewayd's audit errors."""
    try:
        yield
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        raise translate(exc) from exc


def to_row(event: AuditEvent) -> list[Any]:
    """The event as the table's column values; TypeError if its findings are not JSON."""
    row = list(event.values())
    row[_TS] = datetime.fromtimestamp(event.ts, UTC)
    row[_FINDINGS] = orjson.dumps(event.findings).decode()
    return row


def from_row(record: asyncpg.Record) -> AuditEvent:
    """The event a table row holds."""
    values = dict(record.items())
    values["event_id"] = str(values["event_id"])
    values["ts"] = values["ts"].timestamp()
    values["findings"] = orjson.loads(values["findings"])
    return AuditEvent(**values)


def describe(dsn: str) -> str:
    """host:port/database of a DSN, for status and logs: no user, no password."""
    parts = urlsplit(dsn)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or '/'}"


async def connect(config: PostgresSinkConfig) -> asyncpg.Connection:
    """One connection to the audit database (for `gatewayd audit tail`), within write_timeout."""
    with translated():
        return await asyncpg.connect(str(config.dsn), timeout=config.write_timeout)


class PostgresSink:
    """Stores audit batches in `gatewayd_audit`; see the module docstring."""

    kind = "postgres"

    def __init__(
        self, config: PostgresSinkConfig, *, maintain_every: float = MAINTAIN_EVERY
    ) -> None:
        self._config = config
        self._maintain_every = maintain_every
        self._pool: asyncpg.Pool | None = None
        # Known once the table has been created or found.
        self._partitioned: bool | None = None
        self._months: set[table.Month] = set()
        self._maintainer: asyncio.Task[None] | None = None
        # One upkeep at a time: a retention pass whose rows another deletes
        # under it would stop early, taking them for the last.
        self._upkeep = asyncio.Lock()

    async def open(self) -> None:
        """Make the pool (connecting lazily) and start maintenance; never fails on the database."""
        self._pool = await asyncpg.create_pool(
            str(self._config.dsn),
            min_size=0,
            max_size=POOL_SIZE,
            init=_init_connection,
            reset=_keep_session,
        )
        self._maintainer = asyncio.create_task(self._maintain_loop(), name="gatewayd-audit-table")

    async def write(self, batch: Sequence[AuditEvent]) -> int:
        """COPY `batch` in and keep the rows not there already, within write_timeout."""
        rows: list[list[Any]] = []
        for event in batch:
            try:
                rows.append(to_row(event))
            except TypeError:
                log.error("audit event %s could not be encoded; dropped", event.event_id)
        if not rows:
            return 0
        with translated():
            async with asyncio.timeout(self._config.write_timeout):
                await self._store(rows)
        return len(rows)

    async def maintain(self) -> None:
        """Create the table if missing, next month's partition, and apply the retention."""
        pool = self._ready_pool()
        with translated():
            async with self._upkeep, pool.acquire() as conn:
                await self._prepare(conn)
                retention = self._config.retention
                if retention is not None:
                    await self._expire(conn, table.cutoff_for(retention))

    async def close(self) -> None:
        """Stop maintenance and close the pool (terminated if it will not close)."""
        if self._maintainer is not None:
            self._maintainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintainer
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), self._config.write_timeout)
            except TimeoutError:
                self._pool.terminate()

    def status(self) -> dict[str, object]:
        """The database (without credentials), table and partitioning."""
        partitioned = self._partitioned
        return {
            "database": describe(self._config.dsn),
            "table": table.TABLE,
            "partition": None if partitioned is None else ("monthly" if partitioned else "none"),
        }

    async def _store(self, rows: list[list[Any]]) -> None:
        pool = self._ready_pool()
        async with pool.acquire() as conn:
            if self._partitioned is None:
                await self._prepare(conn)
            if self._partitioned:
                missing = table.months_of(row[_TS] for row in rows) - self._months
                if missing:
                    await table.create_partitions(conn, missing)
                    self._months |= missing
            try:
                await _copy(conn, rows)
            except asyncpg.UndefinedTableError:
                # Dropped under us: made again before the next try.
                self._partitioned = None
                raise

    async def _prepare(self, conn: table.Conn) -> None:
        partitioned = await table.create_table(
            conn, partitioned=self._config.partition == "monthly"
        )
        if partitioned:
            this_month = next(iter(table.months_of([datetime.now(UTC)])))
            self._months = await table.partitions(conn)
            ahead = {this_month, table.month_after(this_month)} - self._months
            if ahead:
                await table.create_partitions(conn, ahead)
                self._months |= ahead
        self._partitioned = partitioned

    async def _expire(self, conn: table.Conn, cutoff: datetime) -> None:
        if self._partitioned:
            dropped = await table.drop_partitions_before(conn, cutoff)
            self._months -= set(dropped)
            if dropped:
                names = ", ".join(map(table.partition_name, dropped))
                log.info("audit retention dropped partitions %s", names)
            return
        deleted = await table.delete_before(conn, cutoff, _DELETE_PAUSE)
        if deleted:
            log.info("audit retention deleted %d rows older than %s", deleted, cutoff.isoformat())

    async def _maintain_loop(self) -> None:
        while True:
            try:
                await self.maintain()
            except AuditSinkError as exc:
                log.warning(
                    "audit table upkeep failed (%s); trying again in %.0fs",
                    exc.kind,
                    self._maintain_every,
                )
            await asyncio.sleep(self._maintain_every)

    def _ready_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise AuditSinkUnavailable("not_open")
        return self._pool


async def _copy(conn: table.Conn, rows: list[list[Any]]) -> None:
    """COPY `rows` into the table, skipping the events it holds already."""
    try:
        await conn.copy_records_to_table(table.TABLE, records=rows, columns=COLUMNS)
    except asyncpg.UniqueViolationError:
        # COPY keeps all or nothing, so none of the rows was kept: they go
        # through the landing table, which lets ON CONFLICT skip the stored ones.
        async with conn.transaction():
            await conn.copy_records_to_table(table.INCOMING, records=rows, columns=COLUMNS)
            await conn.execute(table.INSERT)


async def _init_connection(conn: table.Conn) -> None:
    await conn.execute(table.CREATE_INCOMING)


async def _keep_session(conn: table.Conn) -> None:
    """Return a connection to the pool as it is (asyncpg still rolls back an open
    transaction): the sink sets no session state, and the default reset would
    cost a round trip per batch."""
