"""A fake audit sink with a table's semantics, for the writer's tests.

Rows are kept by event_id (a replayed event is skipped, as ON CONFLICT does);
tests steer it: `down` makes every write unavailable, `hang` makes writes
never return, and a request id in `poison` makes any batch holding it
rejected, as a constraint would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from gatewayd.audit.event import AuditEvent
from gatewayd.errors import AuditBatchRejected, AuditSinkUnavailable


@dataclass
class FakeSink:
    kind: str = "fake"
    rows: dict[str, AuditEvent] = field(default_factory=dict)
    # Every write call's request ids, successful or not, in order.
    calls: list[list[str]] = field(default_factory=list)
    down: bool = False
    hang: bool = False
    poison: set[str] = field(default_factory=set)
    opened: bool = False
    closed: bool = False

    async def open(self) -> None:
        """Note the call."""
        self.opened = True

    async def write(self, batch: Sequence[AuditEvent]) -> int:
        """Store the batch by event id unless told to fail."""
        self.calls.append([event.request_id for event in batch])
        if self.hang:
            await asyncio.Event().wait()
        if self.down:
            raise AuditSinkUnavailable("connect")
        if any(event.request_id in self.poison for event in batch):
            raise AuditBatchRejected("SQLSTATE 23514")
        for event in batch:
            self.rows.setdefault(event.event_id, event)
        return len(batch)

    async def close(self) -> None:
        """Note the call."""
        self.closed = True

    def status(self) -> dict[str, object]:
        """Nothing beyond the writer's own."""
        return {}

    def request_ids(self) -> list[str]:
        """The stored rows' request ids, in the order they were first stored."""
        return [event.request_id for event in self.rows.values()]
