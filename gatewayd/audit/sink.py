"""The seam between the audit writer and where events end up.

A sink stores batches; the writer (gatewayd.audit.writer) owns everything
else: the queue, batching, what a full queue does, the spool, metrics and
the close deadline. A sink signals failure with the errors of
gatewayd.errors: AuditSinkUnavailable (try again later; the writer spools)
or AuditBatchRejected (the data was refused; the writer retries row by row).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

from gatewayd.audit.event import AuditEvent
from gatewayd.audit.jsonl import Chunk, JsonlFile, encode_batch, error_kind
from gatewayd.config.schema import JsonlSinkConfig, SinkConfig
from gatewayd.errors import AuditSinkUnavailable

_T = TypeVar("_T")

# How long closing waits for a file close queued behind a write still in flight.
_CLOSE_WAIT = 1.0


class Sink(Protocol):
    """Where audit batches are stored."""

    kind: str

    async def open(self) -> None:
        """Get ready; raise OSError only for what must stop gatewayd from starting."""

    async def write(self, batch: Sequence[AuditEvent]) -> int:
        """Store `batch`; how many of its events are now stored that were not reported
        stored before (events it cannot encode are skipped, so counted dropped)."""

    async def close(self) -> None:
        """Release everything; no write is in flight from the writer."""

    def status(self) -> dict[str, object]:
        """Sink-specific facts for /health/detailed, never event data or credentials."""


class OffSink:
    """audit.sink: off; the writer never queues, so this is never written to."""

    kind = "off"

    async def open(self) -> None:
        """Nothing to open."""

    async def write(self, batch: Sequence[AuditEvent]) -> int:
        """Store nothing."""
        return 0

    async def close(self) -> None:
        """Nothing to close."""

    def status(self) -> dict[str, object]:
        """Nothing to say."""
        return {}


class JsonlSink:
    """Appends batches to a JSONL file, on a worker thread of its own.

    A write that fails part-way keeps its encoded chunk: the writer retries
    the same batch, and the rest of it (a line cut short included) is
    appended rather than written twice.
    """

    kind = "jsonl"

    def __init__(self, config: JsonlSinkConfig) -> None:
        self.path = config.path
        self._file = JsonlFile(config.path)
        # Threads start lazily, so an unused executor costs nothing.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gatewayd-jsonl")
        self._pending: tuple[Sequence[AuditEvent], Chunk] | None = None

    async def open(self) -> None:
        """Open the file; raises OSError when it cannot be opened."""
        try:
            await self._in_thread(self._file.open)
        except OSError:
            self._executor.shutdown(wait=False)
            raise

    async def write(self, batch: Sequence[AuditEvent]) -> int:
        """Append `batch` (or the rest of it, when it is the batch that failed last)."""
        if self._pending is not None and self._pending[0] is batch:
            chunk = self._pending[1]
        else:
            encoded, _ = encode_batch(batch)
            if encoded is None:
                return 0
            chunk = encoded
        try:
            await self._in_thread(self._file.write, chunk)
        except OSError as exc:
            self._pending = (batch, chunk)
            raise AuditSinkUnavailable(error_kind(exc), landed=chunk.newly_written()) from exc
        self._pending = None
        return chunk.newly_written()

    async def close(self) -> None:
        """Close the file once any write in flight on the worker thread is over."""
        closed = self._executor.submit(self._file.close)
        self._executor.shutdown(wait=False)
        # A write stuck on a dead disk must not hold up the exit.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.wrap_future(closed), _CLOSE_WAIT)

    def status(self) -> dict[str, object]:
        """The file's path."""
        return {"path": str(self.path)}

    def _in_thread(self, func: Callable[..., _T], *args: object) -> asyncio.Future[_T]:
        return asyncio.get_running_loop().run_in_executor(self._executor, func, *args)


def make_sink(config: SinkConfig) -> Sink:
    """The sink `config` describes (unopened)."""
    if config.kind == "jsonl":
        return JsonlSink(config)
    if config.kind == "postgres":
        # Imported here: asyncpg is loaded only by those who use it.
        from gatewayd.audit.postgres import PostgresSink

        return PostgresSink(config)
    return OffSink()
