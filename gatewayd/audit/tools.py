"""`gatewayd audit tail` and `gatewayd audit replay`: the operator's view of the audit.

tail prints recent events as JSON lines, the same from the file and the
table; with --follow it keeps printing new ones (from a file it follows
logrotate's renames, as `tail -F` does). replay drains the spool into the
database by hand, leaving alone the sets a running gatewayd holds.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from gatewayd.audit import table
from gatewayd.audit.event import COLUMNS
from gatewayd.audit.jsonl import encode
from gatewayd.audit.writer import AuditWriter
from gatewayd.config.schema import AuditConfig, JsonlSinkConfig, PostgresSinkConfig
from gatewayd.errors import AuditSinkError

# How often --follow looks for new events.
POLL = 0.5
# Rows committed this much later than their ts (another worker's batch, a
# flush interval's wait) still show in --follow.
_LATE = 10.0
_BLOCK = 65536


def tail(
    config: AuditConfig,
    lines: int,
    *,
    follow: bool,
    out: BinaryIO | None = None,
    running: Callable[[], bool] = lambda: True,
) -> int:
    """Print the last `lines` events of the configured sink, then new ones if `follow`;
    the exit status. `running` lets a caller stop a follow (tests)."""
    out = out if out is not None else sys.stdout.buffer
    sink = config.sink
    if isinstance(sink, JsonlSinkConfig):
        return _tail_file(sink.path, lines, follow, out, running)
    if isinstance(sink, PostgresSinkConfig):
        return asyncio.run(_tail_table(sink, lines, follow, out, running))
    print("audit.sink is off: there are no audit events", file=sys.stderr)
    return 1


def replay(config: AuditConfig) -> int:
    """Drain the spool into the sink; the exit status (1 if events are left)."""
    if not isinstance(config.sink, PostgresSinkConfig):
        print(f"audit.sink is {config.sink.kind}: it has no spool", file=sys.stderr)
        return 0
    writer = AuditWriter(config)
    left = asyncio.run(writer.drain())
    status = writer.status()
    print(
        f"replayed {status['replayed']} events from {config.sink.spool_dir}"
        f" ({status['dead_lettered']} dead-lettered, {status['dropped']} dropped)"
    )
    if left:
        reason = status["last_error"] or "held by a running gatewayd"
        print(f"{left} bytes still spooled ({reason})", file=sys.stderr)
        return 1
    return 0


def _tail_file(
    path: Path, lines: int, follow: bool, out: BinaryIO, running: Callable[[], bool]
) -> int:
    file: BinaryIO | None
    try:
        file = path.open("rb")
    except FileNotFoundError:
        if not follow:
            print(f"{path}: no audit file yet", file=sys.stderr)
            return 1
        file = None
    if file is not None:
        out.write(_last_lines(file, lines))
        out.flush()
    while follow and running():
        file = _follow_step(path, file, out)
        time.sleep(POLL)
    if file is not None:
        file.close()
    return 0


def _last_lines(file: BinaryIO, count: int) -> bytes:
    """The last `count` whole lines of `file`, leaving it positioned at their end."""
    end = file.seek(0, os.SEEK_END)
    start, data = end, b""
    while start > 0 and data.count(b"\n") <= count:
        start = max(0, start - _BLOCK)
        file.seek(start)
        data = file.read(end - start)
    # A last line still being written has no newline yet: --follow prints it whole.
    complete = data[: data.rfind(b"\n") + 1]
    file.seek(start + len(complete))
    return b"".join(complete.splitlines(keepends=True)[-count:]) if count else b""


def _follow_step(path: Path, file: BinaryIO | None, out: BinaryIO) -> BinaryIO | None:
    """Print the whole lines appended since the last step; follow a rotation."""
    if file is not None:
        _print_whole_lines(file, out)
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return file
    if file is None or os.fstat(file.fileno()).st_ino != current.st_ino:
        # The old file's last lines were printed just above.
        if file is not None:
            file.close()
        file = path.open("rb")
        _print_whole_lines(file, out)
    elif current.st_size < file.tell():
        file.seek(0)  # truncated in place (logrotate's copytruncate)
    return file


def _print_whole_lines(file: BinaryIO, out: BinaryIO) -> None:
    data = file.read()
    whole = data[: data.rfind(b"\n") + 1]
    # A line still being written is read again, whole, next time.
    file.seek(len(whole) - len(data), os.SEEK_CUR)
    out.write(whole)
    out.flush()


async def _tail_table(
    sink: PostgresSinkConfig,
    lines: int,
    follow: bool,
    out: BinaryIO,
    running: Callable[[], bool],
) -> int:
    from gatewayd.audit.postgres import connect, translated

    try:
        conn = await connect(sink)
        try:
            with translated():
                await _print_rows(conn, lines, follow, out, running)
        finally:
            await conn.close()
    except AuditSinkError as exc:
        print(f"cannot read the audit table ({exc.kind})", file=sys.stderr)
        return 1
    return 0


async def _print_rows(
    conn: table.Conn, lines: int, follow: bool, out: BinaryIO, running: Callable[[], bool]
) -> None:
    from gatewayd.audit.postgres import from_row

    names = ", ".join(COLUMNS)
    rows = await conn.fetch(
        f"SELECT {names} FROM {table.TABLE} ORDER BY ts DESC LIMIT $1",  # noqa: S608
        lines,
    )
    # Event ids printed lately, so rows that commit late are printed once.
    seen: dict[str, datetime] = {}

    def show(batch: list[Any]) -> None:
        for row in batch:
            if str(row["event_id"]) not in seen:
                out.write(encode(from_row(row)))
                seen[str(row["event_id"])] = row["ts"]
        out.flush()

    show(list(reversed(rows)))
    since = max(seen.values(), default=datetime.now(UTC))
    while follow and running():
        await asyncio.sleep(POLL)
        show(
            await conn.fetch(
                f"SELECT {names} FROM {table.TABLE} WHERE ts > $1 ORDER BY ts",  # noqa: S608
                since - timedelta(seconds=_LATE),
            )
        )
        since = max(seen.values(), default=since)
        horizon = since - timedelta(seconds=2 * _LATE)
        seen = {key: ts for key, ts in seen.items() if ts >= horizon}
