"""Budgets in this process's memory: bounded, and kept across reloads.

Each kind of budget is one dict from key to TAT (or slot count), kept in
least-recently-used order by re-inserting a key on every use. Keys whose TAT
has passed are idle (a whole budget, the same as no entry) and are dropped
from the cold end as new keys come in, so the dicts hold the recently active
keys only; at `max_keys` the coldest key goes even if not yet idle, which
hands that key a whole budget early rather than letting memory grow.

About 120 bytes per key and kind of budget (a million keys with a request
limit measured 120 MB; the tests hold them under 200 MB).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from gatewayd.ratelimit import gcra
from gatewayd.ratelimit.backend import Answer, Ask

# Cold entries looked at per new key: enough to outpace key creation.
_SWEEP = 2


class MemoryBackend:
    """This process's budgets; `clock` is injected by tests."""

    name = "memory"

    def __init__(self, max_keys: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_keys = max_keys
        self._clock = clock
        self._requests: dict[str, float] = {}
        self._tokens: dict[str, float] = {}
        self._inflight: dict[str, int] = {}

    async def acquire(self, ask: Ask) -> Answer:
        return self.decide(ask)

    async def settle(self, ask: Ask, used: int | None) -> None:
        self.give_back(ask, used)

    def decide(self, ask: Ask) -> Answer:
        """Take from every budget of `ask`, or from none."""
        now = self._clock()
        key = ask.key
        if ask.max_concurrent and self._inflight.get(key, 0) >= ask.max_concurrent:
            return Answer("concurrency", 1.0, None, None)
        requests = tokens = None
        if ask.requests is not None:
            requests = gcra.take(self._requests.get(key), now, ask.requests, 1)
            if not requests.allowed:
                return Answer("requests", requests.retry_after, requests, None)
        if ask.tokens is not None:
            tokens = gcra.take(self._tokens.get(key), now, ask.tokens, ask.cost)
            if not tokens.allowed:
                return Answer("tokens", tokens.retry_after, requests, tokens)
        if requests is not None:
            self._store(self._requests, key, requests.tat, now)
        if tokens is not None:
            self._store(self._tokens, key, tokens.tat, now)
        if ask.max_concurrent:
            self._inflight[key] = self._inflight.get(key, 0) + 1
        return Answer(None, 0.0, requests, tokens)

    def give_back(self, ask: Ask, used: int | None) -> None:
        """Settle `ask`'s reservation to `used` tokens and free its slot."""
        key = ask.key
        if ask.tokens is not None and used is not None and used != ask.cost:
            now = self._clock()
            tat = gcra.give_back(self._tokens.get(key), now, ask.tokens, used - ask.cost)
            if tat is None or tat <= now:
                self._tokens.pop(key, None)
            else:
                self._store(self._tokens, key, tat, now)
        if ask.max_concurrent:
            left = self._inflight.get(key, 0) - 1
            if left > 0:
                self._inflight[key] = left
            else:
                self._inflight.pop(key, None)

    def _store(self, budgets: dict[str, float], key: str, tat: float, now: float) -> None:
        if budgets.pop(key, None) is None:
            self._make_room(budgets, now)
        budgets[key] = tat

    def _make_room(self, budgets: dict[str, float], now: float) -> None:
        """Drop idle keys from the cold end, and the coldest one when full."""
        for _ in range(_SWEEP):
            if not budgets:
                return
            coldest = next(iter(budgets))
            if budgets[coldest] > now and len(budgets) < self._max_keys:
                return
            del budgets[coldest]

    def keys(self) -> int:
        """Budgets held, of every kind."""
        return len(self._requests) + len(self._tokens) + len(self._inflight)

    def status(self) -> dict[str, Any]:
        return {"backend": self.name, "healthy": True, "keys": self.keys()}
