"""What a limiter backend is asked, what it answers, and the protocol both backends keep.

One `Ask` holds every limit that applies to one request, so a backend decides
them together: a request refused for tokens takes nothing from its request
budget, and none is half-counted when a backend fails midway.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple, Protocol

from gatewayd.ratelimit.gcra import Rate, Take

Limit = Literal["requests", "tokens", "concurrency"]


class Ask(NamedTuple):
    # Whose budget: the scope (a route with its own limits, or all) and the
    # identity's limit key, as gatewayd.ratelimit.limiter builds it.
    key: str
    requests: Rate | None
    tokens: Rate | None
    # Tokens reserved for this request: its prompt's estimate plus its maximum output.
    cost: int
    # Requests of this key in flight at once; 0 for no limit.
    max_concurrent: int
    # This request's slot among those in flight, and how long the slot lives
    # if its holder dies without giving it back (kill -9).
    lease: str
    lease_for: float


class Answer(NamedTuple):
    refused: Limit | None
    # Seconds until asking again can succeed (0 when allowed).
    retry_after: float
    requests: Take | None
    tokens: Take | None


class Backend(Protocol):
    """Where budgets live: this process's memory, or Redis shared by every instance."""

    name: str

    async def acquire(self, ask: Ask) -> Answer:
        """Take from every budget of `ask` at once, or from none of them."""
        ...

    async def settle(self, ask: Ask, used: int | None) -> None:
        """The request ended: correct its token reservation to `used` (None keeps
        the reservation) and give back its concurrency slot. Never raises:
        a failure is counted, and leases run out by themselves."""
        ...

    def status(self) -> dict[str, Any]: ...
