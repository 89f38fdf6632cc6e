"""The audit writer: a bounded queue the request path feeds without waiting,
drained in batches to the JSONL file by one background task.

Memory is bounded by `queue_size` queued events plus one batch held for retry
while the disk refuses writes; past that, new events are dropped and counted,
never waited for. File I/O runs on one dedicated worker thread, so writes stay
in order and the file is never closed under a write still in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from gatewayd.audit.event import AuditEvent
from gatewayd.audit.jsonl import Chunk, JsonlFile, encode_batch, error_kind
from gatewayd.config.schema import AuditConfig
from gatewayd.observability.metrics import AUDIT_EVENTS, AUDIT_QUEUE_DEPTH

log = logging.getLogger(__name__)

_T = TypeVar("_T")

_WRITTEN = AUDIT_EVENTS.labels(outcome="written")
_DROPPED = AUDIT_EVENTS.labels(outcome="dropped")

# How long close() keeps trying to write what is queued before giving up.
CLOSE_TIMEOUT = 5.0
# A full queue drops events on every request; one warning per this many seconds.
_DROP_LOG_EVERY = 10.0


class AuditWriter:
    """Queues audit events without blocking and appends them to a JSONL file in batches."""

    def __init__(self, config: AuditConfig, *, close_timeout: float = CLOSE_TIMEOUT) -> None:
        self._config = config
        self._close_timeout = close_timeout
        self._enabled = config.sink != "off"
        self._accepting = self._enabled
        self._queue: deque[AuditEvent] = deque()
        self._limit = config.queue_size
        self._batch_size = config.batch_size
        self._wake = asyncio.Event()
        self._file = JsonlFile(config.path)
        # Threads start lazily, so an unused executor costs nothing.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gatewayd-audit")
        self._task: asyncio.Task[None] | None = None
        # A batch encoded and not yet fully written: retried before anything newer.
        self._pending: Chunk | None = None
        self._closing = False
        self._failing_since: float | None = None
        self._last_error: str | None = None
        self._written = 0
        self._dropped = 0
        self._drops_unlogged = 0
        self._drop_logged_at = -math.inf

    @property
    def enabled(self) -> bool:
        """False with sink off: callers need not even build the event."""
        return self._enabled

    async def start(self) -> None:
        """Open the file and start the flush task; raises OSError when the file cannot be opened."""
        if not self._enabled:
            return
        try:
            await self._in_thread(self._file.open)
        except OSError:
            self._executor.shutdown(wait=False)
            raise
        self._task = asyncio.create_task(self._run(), name="gatewayd-audit-writer")

    def emit(self, event: AuditEvent) -> None:
        """Queue one event (from the event loop's thread); never waits: a full queue drops it."""
        queue = self._queue
        if self._accepting and len(queue) < self._limit:
            queue.append(event)
            if len(queue) >= self._batch_size:
                self._wake.set()
        elif self._enabled:
            self._drop_on_full()

    async def close(self) -> None:
        """Stop accepting events, write what is queued for at most close_timeout, close the file."""
        self._accepting = False
        task, self._task = self._task, None
        if task is None:
            self._give_up()
            return
        self._closing = True
        self._wake.set()
        finished = True
        try:
            await asyncio.wait_for(task, self._close_timeout)
        except TimeoutError:
            finished = False
            self._give_up()
        # Queued behind any write still in flight on the worker thread.
        closed = self._executor.submit(self._file.close)
        self._executor.shutdown(wait=False)
        if finished:
            await asyncio.wrap_future(closed)

    def status(self) -> dict[str, object]:
        """The writer's state for /health/detailed: counts and an error word, never event data."""
        if not self._enabled:
            return {"sink": "off"}
        return {
            "sink": self._config.sink,
            "path": str(self._config.path),
            "healthy": self._failing_since is None,
            "queue_depth": self._depth(),
            "written": self._written,
            "dropped": self._dropped,
            "last_error": self._last_error,
        }

    async def _run(self) -> None:
        interval = self._config.flush_interval
        while True:
            if self._pending is not None:
                # A failed write is retried once per interval, however fast
                # events arrive, so a broken disk does not spin the loop.
                await asyncio.sleep(interval)
            elif not self._closing:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(interval):
                        await self._wake.wait()
            self._wake.clear()
            await self._flush()
            if self._closing and self._pending is None and not self._queue:
                return

    async def _flush(self) -> None:
        """Write batch after batch until the queue is empty or a write fails."""
        while True:
            if self._pending is None:
                if not self._queue:
                    break
                self._pending = self._next_chunk()
                continue
            AUDIT_QUEUE_DEPTH.set(self._depth())
            try:
                await self._in_thread(self._file.write, self._pending)
            except OSError as exc:
                self._count_written(self._pending)
                self._write_failed(exc)
                break
            self._count_written(self._pending)
            self._pending = None
            if self._failing_since is not None:
                log.warning(
                    "audit writes to %s recovered after %.1fs",
                    self._config.path,
                    time.monotonic() - self._failing_since,
                )
                self._failing_since = None
        AUDIT_QUEUE_DEPTH.set(self._depth())

    def _next_chunk(self) -> Chunk | None:
        # Encoded here rather than on the worker thread: orjson holds the GIL
        # either way, and an event is never in flight outside queue or chunk.
        queue = self._queue
        batch = [queue.popleft() for _ in range(min(self._batch_size, len(queue)))]
        chunk, skipped = encode_batch(batch)
        self._count_dropped(skipped)
        return chunk

    def _count_written(self, chunk: Chunk) -> None:
        count = chunk.newly_written()
        self._written += count
        _WRITTEN.inc(count)

    def _count_dropped(self, count: int) -> None:
        if count:
            self._dropped += count
            _DROPPED.inc(count)

    def _write_failed(self, exc: OSError) -> None:
        kind = error_kind(exc)
        if self._failing_since is None or kind != self._last_error:
            log.error(
                "audit write to %s failed (%s); %d events held, retrying every %ss",
                self._config.path,
                kind,
                self._depth(),
                self._config.flush_interval,
            )
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        self._last_error = kind

    def _drop_on_full(self) -> None:
        self._count_dropped(1)
        self._drops_unlogged += 1
        now = time.monotonic()
        if now - self._drop_logged_at >= _DROP_LOG_EVERY:
            log.warning(
                "audit queue full or closed: dropped %d events (queue_size %d)",
                self._drops_unlogged,
                self._limit,
            )
            self._drops_unlogged, self._drop_logged_at = 0, now

    def _give_up(self) -> None:
        """Count everything still unwritten as dropped, once the writer stops trying."""
        if self._pending is not None:
            self._count_written(self._pending)
        lost = self._depth()
        self._queue.clear()
        self._pending = None
        if lost:
            self._count_dropped(lost)
            log.error(
                "audit writer closed with %d events unwritten (last error: %s)",
                lost,
                self._last_error or "none",
            )
        AUDIT_QUEUE_DEPTH.set(0)

    def _depth(self) -> int:
        held = self._pending.unwritten() if self._pending is not None else 0
        return len(self._queue) + held

    def _in_thread(self, func: Callable[..., _T], *args: object) -> asyncio.Future[_T]:
        return asyncio.get_running_loop().run_in_executor(self._executor, func, *args)
