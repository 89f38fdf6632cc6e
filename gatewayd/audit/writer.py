"""The audit writer: a bounded queue the request path feeds, drained in batches
to the sink by one background task.

    emit -> queue -> batch -> sink                      (healthy)
                          -> spool (fsync'd) -> sink    (sink unavailable; replayed later)
                          -> rows one by one -> dead-letter file   (sink refused the batch)

A full queue makes `emit` wait for room (on_full: block) for at most
block_timeout, or drops the event (drop); a writer that made no room within
block_timeout is stuck, and then a full queue drops at once until it moves,
so a dead disk cannot stall every request. Memory is bounded by queue_size
events plus one batch held when neither the sink nor the spool takes it.

Only the postgres sink has a spool (a JSONL file on a failing disk would
spool to the same disk): while the spool holds events, new batches are
appended to it too, so events reach the sink in the order they came. A
second task replays the spool, every flush_interval, backing off to 30 s
while the sink keeps failing; it never holds up the flushes, so a database
that hangs costs the queue one write_timeout at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from gatewayd.audit.event import AuditEvent
from gatewayd.audit.sink import Sink, make_sink
from gatewayd.audit.spool import Spool
from gatewayd.config.schema import AuditConfig
from gatewayd.errors import AuditBatchRejected, AuditSinkUnavailable
from gatewayd.observability import metrics

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# How long close() keeps trying to store what is queued before it spools
# the rest (or, without a spool, gives up on it).
CLOSE_TIMEOUT = 5.0
# Longest pause between replay attempts while the sink keeps failing.
MAX_RETRY = 30.0
# How often the spool directory is searched for sets left by dead processes.
SCAN_EVERY = 30.0
# A full queue drops events on every request; one warning per this many seconds.
_DROP_LOG_EVERY = 10.0

_OUTCOMES = ("written", "spooled", "replayed", "dead_lettered", "dropped")


class AuditWriter:
    """Queues audit events and stores them in batches through one sink."""

    def __init__(
        self,
        config: AuditConfig,
        *,
        close_timeout: float = CLOSE_TIMEOUT,
        sink: Sink | None = None,
    ) -> None:
        self._config = config
        self._close_timeout = close_timeout
        self._sink = sink if sink is not None else make_sink(config.sink)
        self._enabled = config.sink.kind != "off"
        spool_dir = getattr(config.sink, "spool_dir", None)
        self._spool = Spool(spool_dir) if spool_dir is not None else None
        self._accepting = self._enabled
        self._queue: deque[AuditEvent] = deque()
        self._limit = config.queue_size
        self._batch_size = config.batch_size
        self._block = config.on_full == "block"
        # Requests waiting for room (on_full: block), in arrival order.
        self._waiting: deque[tuple[AuditEvent, asyncio.Future[None]]] = deque()
        self._stuck = False
        self._wake = asyncio.Event()
        # Spool I/O (appends with fsync, replays) runs on one thread, in order.
        self._disk = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gatewayd-spool")
        self._task: asyncio.Task[None] | None = None
        self._replayer: asyncio.Task[None] | None = None
        # A batch neither the sink nor the spool took, retried before anything newer.
        self._held: Sequence[AuditEvent] | None = None
        self._held_landed = 0
        self._closing = False
        self._failing_since: float | None = None
        self._last_error: str | None = None
        self._retry_at = 0.0
        self._retry_delay = config.flush_interval
        self._scanned_at = 0.0
        self._latency_ms: float | None = None
        self._counts = dict.fromkeys(_OUTCOMES, 0)
        self._counters = {o: metrics.AUDIT_EVENTS.labels(outcome=o) for o in _OUTCOMES}
        self._flush_time = metrics.AUDIT_FLUSH_DURATION.labels(target=self._sink.kind)
        self._spool_time = metrics.AUDIT_FLUSH_DURATION.labels(target="spool")
        self._drops_unlogged = 0
        self._drop_logged_at = -math.inf

    @property
    def enabled(self) -> bool:
        """False with sink off: callers need not even build the event."""
        return self._enabled

    async def start(self) -> None:
        """Open the sink and the spool, start the flush task; raises OSError when the
        file or the spool directory cannot be used (a database may be down: that is fine)."""
        if not self._enabled:
            return
        await self._open()
        self._task = asyncio.create_task(self._run(), name="gatewayd-audit-writer")
        if self._spool is not None:
            self._replayer = asyncio.create_task(self._replay_loop(), name="gatewayd-audit-replay")

    async def drain(self) -> int:
        """Replay every spooled event the sink takes, without serving (`gatewayd audit
        replay`); the bytes still spooled after: sets a running gatewayd holds, or
        what a failing sink would not take."""
        if self._spool is None:
            return 0
        await self._open()
        try:
            await self._replay(self._spool)
        finally:
            await self._sink.close()
            await self._on_disk(self._spool.close)
            self._disk.shutdown(wait=False)
        return self._spool.stats.bytes

    async def emit(self, event: AuditEvent) -> None:
        """Queue one event; returns at once unless the queue is full and on_full is block."""
        queue = self._queue
        if self._accepting and len(queue) < self._limit and not self._waiting:
            queue.append(event)
            if len(queue) >= self._batch_size:
                self._wake.set()
            return
        if not self._enabled:
            return
        if self._accepting and self._block and not self._stuck:
            await self._wait_for_room(event)
            return
        self._drop_on_full()

    async def close(self) -> None:
        """Stop accepting events and store what is queued, within close_timeout; what
        is left then goes to the spool (without one, it is counted dropped)."""
        self._accepting = False
        self._admit(everyone=True)
        task, self._task = self._task, None
        if task is None:
            self._give_up()
            self._disk.shutdown(wait=False)
            return
        if self._replayer is not None:
            # A batch it had in flight stays spooled, for the next start.
            self._replayer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replayer
        self._closing = True
        self._wake.set()
        try:
            await asyncio.wait_for(task, self._close_timeout)
        except TimeoutError:
            await self._spool_the_rest()
        await self._sink.close()
        if self._spool is not None:
            await self._on_disk(self._spool.close)
        self._disk.shutdown(wait=False)

    def status(self) -> dict[str, object]:
        """The writer's state for /health/detailed: counts and error words, never event data."""
        if not self._enabled:
            return {"sink": "off"}
        status: dict[str, object] = {
            "sink": self._sink.kind,
            **self._sink.status(),
            "healthy": self._failing_since is None,
            "latency_ms": self._latency_ms,
            "queue_depth": self._depth(),
            **self._counts,
            "last_error": self._last_error,
        }
        if self._spool is not None:
            stats = self._spool.stats
            oldest = stats.oldest_ts
            status["spool"] = {
                "bytes": stats.bytes,
                "segments": stats.segments,
                "oldest_event_age_s": round(time.time() - oldest, 1) if oldest else None,
                "path": str(self._spool.directory),
            }
        return status

    async def _open(self) -> None:
        try:
            if self._spool is not None:
                await self._on_disk(self._spool.open)
            await self._sink.open()
        except OSError:
            self._disk.shutdown(wait=False)
            raise
        self._scanned_at = time.monotonic()
        self._show_spool()

    async def _run(self) -> None:
        interval = self._config.flush_interval
        loop = asyncio.get_running_loop()
        due = loop.time() + interval
        while True:
            if self._held is not None:
                # A batch nothing would take is retried once per interval,
                # however fast events arrive, so a broken disk does not spin.
                await asyncio.sleep(interval)
            elif not self._closing:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(due):
                        await self._wake.wait()
            self._wake.clear()
            if self._closing or loop.time() >= due:
                await self._flush(len(self._queue))
                due = loop.time() + interval
            else:
                await self._flush(0)
            if self._closing and self._held is None and not self._queue:
                return

    async def _flush(self, due: int) -> None:
        """Store the `due` oldest events, and full batches after them, until nothing
        takes a batch.

        Events arriving while a batch is stored wait for a full batch or the
        next interval: draining the queue to empty would store them a few at
        a time, each write paying its round trips and commit for a handful.
        """
        while True:
            if self._held is None:
                queue = self._queue
                if not queue or (due <= 0 and len(queue) < self._batch_size):
                    break
                self._held, self._held_landed = self._take(), 0
                due -= len(self._held)
            metrics.AUDIT_QUEUE_DEPTH.set(self._depth())
            if not await self._store(self._held):
                break
            self._held = None
            self._stuck = False
            self._admit()
        metrics.AUDIT_QUEUE_DEPTH.set(self._depth())

    def _take(self) -> list[AuditEvent]:
        queue = self._queue
        return [queue.popleft() for _ in range(min(self._batch_size, len(queue)))]

    async def _store(self, batch: Sequence[AuditEvent]) -> bool:
        """Store one batch in the sink, else the spool; False when neither took it."""
        spool = self._spool
        if spool is not None and spool.backlog:
            # Behind what is spooled already, so the sink gets events in order.
            return await self._to_spool(batch)
        started = time.perf_counter()
        try:
            landed = await self._sink.write(batch)
        except AuditBatchRejected:
            stored = await self._one_by_one(batch, "written")
            return stored or await self._to_spool(batch)
        except AuditSinkUnavailable as exc:
            self._count("written", exc.landed)
            self._held_landed += exc.landed
            self._failed(exc.kind)
            return spool is not None and await self._to_spool(batch)
        self._stored(started)
        self._count("written", landed)
        self._count("dropped", len(batch) - self._held_landed - landed)
        return True

    async def _to_spool(self, batch: Sequence[AuditEvent]) -> bool:
        spool = self._spool
        if spool is None:
            return False
        started = time.perf_counter()
        try:
            skipped = await self._on_disk(spool.append, batch)
        except OSError as exc:
            self._failed(f"spool {exc.strerror or type(exc).__name__}")
            return False
        self._spool_time.observe(time.perf_counter() - started)
        self._count("spooled", len(batch) - skipped)
        self._count("dropped", skipped)
        self._show_spool()
        return True

    async def _replay_loop(self) -> None:
        spool = self._spool
        assert spool is not None
        while True:
            await asyncio.sleep(self._config.flush_interval)
            now = time.monotonic()
            if now - self._scanned_at >= SCAN_EVERY:
                self._scanned_at = now
                await self._on_disk(spool.scan)
            if spool.backlog and now >= self._retry_at:
                await self._replay(spool)

    async def _replay(self, spool: Spool) -> None:
        """Move spooled events to the sink, oldest first, until it is empty or fails."""
        while True:
            taken = await self._on_disk(spool.take, self._batch_size)
            if taken is None:
                break
            started = time.perf_counter()
            try:
                landed = await self._sink.write(taken.events)
            except AuditBatchRejected:
                if not await self._one_by_one(taken.events, "replayed"):
                    self._retry_later()
                    return
            except AuditSinkUnavailable as exc:
                self._failed(exc.kind)
                self._retry_later()
                return
            else:
                self._stored(started)
                self._count("replayed", landed)
                self._count("dropped", len(taken.events) - landed)
            await self._on_disk(spool.done, taken)
            self._show_spool()
        log.info("audit spool drained into the %s sink", self._sink.kind)

    async def _one_by_one(self, batch: Sequence[AuditEvent], outcome: str) -> bool:
        """Store a refused batch row by row; dead-letter the rows refused again.

        False when the sink became unavailable meanwhile: nothing is counted
        and the caller keeps the whole batch (the rows stored already are
        skipped as duplicates when it comes back).
        """
        landed = 0
        refused: list[tuple[AuditEvent, str]] = []
        for event in batch:
            try:
                landed += await self._sink.write([event])
            except AuditBatchRejected as exc:
                refused.append((event, exc.kind))
            except AuditSinkUnavailable as exc:
                self._failed(exc.kind)
                return False
        self._count(outcome, landed)
        if refused:
            await self._dead_letter(refused)
        self._count("dropped", len(batch) - landed - len(refused))
        return True

    async def _dead_letter(self, refused: list[tuple[AuditEvent, str]]) -> None:
        kinds = sorted({kind for _, kind in refused})
        spool = self._spool
        try:
            if spool is None:
                raise OSError("no spool directory")
            await self._on_disk(spool.dead_letter, refused)
        except OSError as exc:
            self._count("dropped", len(refused))
            log.error(
                "audit sink refused %d events (%s) and the dead-letter file failed (%s): lost",
                len(refused),
                ", ".join(kinds),
                exc.strerror or exc,
            )
            return
        self._count("dead_lettered", len(refused))
        log.error(
            "audit sink refused %d events (%s); kept in %s: %s",
            len(refused),
            ", ".join(kinds),
            spool.directory / "dead-letter.jsonl",
            " ".join(event.event_id for event, _ in refused[:10]),
        )

    async def _wait_for_room(self, event: AuditEvent) -> None:
        entry: tuple[AuditEvent, asyncio.Future[None]] = (
            event,
            asyncio.get_running_loop().create_future(),
        )
        self._waiting.append(entry)
        self._wake.set()
        try:
            async with asyncio.timeout(self._config.block_timeout):
                await entry[1]
        except TimeoutError:
            if entry in self._waiting and not self._stuck:
                log.error(
                    "audit writer made no room in %ss; dropping events while the queue is full",
                    self._config.block_timeout,
                )
                self._stuck = True
        finally:
            # Still waiting means never admitted (timed out, or the request
            # was cancelled): the event is lost.
            if entry in self._waiting:
                self._waiting.remove(entry)
                self._drop_on_full()

    def _admit(self, *, everyone: bool = False) -> None:
        """Move waiting requests' events into the queue while there is room."""
        waiting, queue = self._waiting, self._queue
        while waiting and (everyone or len(queue) < self._limit):
            event, future = waiting.popleft()
            queue.append(event)
            # A waiter whose timeout fired meanwhile finds itself admitted all the same.
            if not future.done():
                future.set_result(None)

    async def _spool_the_rest(self) -> None:
        """close() ran out of time: spool what is left, or count it dropped."""
        if self._held is not None:
            self._queue.extendleft(reversed(self._held[self._held_landed :]))
            self._held = None
        if self._queue and self._spool is not None:
            batch = list(self._queue)
            self._queue.clear()
            if not await self._to_spool(batch):
                self._queue.extend(batch)
        self._give_up()

    def _give_up(self) -> None:
        """Count everything still unstored as dropped, once the writer stops trying."""
        lost = self._depth()
        self._queue.clear()
        self._held = None
        if lost:
            self._count("dropped", lost)
            log.error(
                "audit writer closed with %d events unstored (last error: %s)",
                lost,
                self._last_error or "none",
            )
        metrics.AUDIT_QUEUE_DEPTH.set(0)

    def _stored(self, started: float) -> None:
        elapsed = time.perf_counter() - started
        self._flush_time.observe(elapsed)
        self._latency_ms = round(elapsed * 1000, 3)
        self._retry_delay = self._config.flush_interval
        if self._failing_since is not None:
            log.warning(
                "audit %s sink recovered after %.1fs",
                self._sink.kind,
                time.monotonic() - self._failing_since,
            )
            self._failing_since = None

    def _failed(self, kind: str) -> None:
        if self._failing_since is None or kind != self._last_error:
            log.error(
                "audit %s sink failed (%s); %d events queued, %s",
                self._sink.kind,
                kind,
                self._depth(),
                "spooling them" if self._spool is not None else "holding them for a retry",
            )
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        self._last_error = kind

    def _retry_later(self) -> None:
        self._retry_at = time.monotonic() + self._retry_delay
        self._retry_delay = min(self._retry_delay * 2, MAX_RETRY)

    def _count(self, outcome: str, count: int) -> None:
        if count:
            self._counts[outcome] += count
            self._counters[outcome].inc(count)

    def _drop_on_full(self) -> None:
        self._count("dropped", 1)
        self._drops_unlogged += 1
        now = time.monotonic()
        if now - self._drop_logged_at >= _DROP_LOG_EVERY:
            log.warning(
                "audit queue full or closed: dropped %d events (queue_size %d)",
                self._drops_unlogged,
                self._limit,
            )
            self._drops_unlogged, self._drop_logged_at = 0, now

    def _show_spool(self) -> None:
        if self._spool is not None:
            stats = self._spool.stats
            metrics.AUDIT_SPOOL_BYTES.set(stats.bytes)
            metrics.AUDIT_SPOOL_OLDEST.set(stats.oldest_ts or 0)

    def _depth(self) -> int:
        held = len(self._held) - self._held_landed if self._held is not None else 0
        return len(self._queue) + held + len(self._waiting)

    def _on_disk(self, func: Callable[..., _T], *args: object) -> asyncio.Future[_T]:
        return asyncio.get_running_loop().run_in_executor(self._disk, func, *args)
