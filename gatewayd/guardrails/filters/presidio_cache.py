"""Where Presidio results are remembered: a per-process LRU and an optional Redis tier.

A result depends on the text and on the analysis parameters, so the key is a
sha256 over both; the text itself is never stored, only the hash and the spans.
A Redis failure costs the cache, never the request: the tier sits behind its
own circuit breaker and a failed lookup is a miss.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

import orjson

from gatewayd.breaker import BreakerState, CircuitBreaker
from gatewayd.config.schema import PresidioFilterConfig
from gatewayd.guardrails.types import Span
from gatewayd.observability.metrics import PRESIDIO_CACHE
from gatewayd.redis_client import RedisClient, RedisReplyError, RedisUnavailable

log = logging.getLogger(__name__)

REDIS_PREFIX = "gatewayd:presidio:"
_REDIS_TIMEOUT = 0.1

Spans = tuple[Span, ...]


class KeyMaker:
    """Turns a text into its cache key under one filter's analysis parameters."""

    __slots__ = ("_base",)

    def __init__(self, config: PresidioFilterConfig) -> None:
        params = orjson.dumps(
            [
                config.language,
                sorted(config.entities),
                config.score_threshold,
                sorted(config.allow_list),
            ]
        )
        # Hashing the parameters once and copying the state per text keeps a
        # lookup to one sha256 over the text alone.
        self._base = hashlib.sha256(params + b"\0")

    def __call__(self, text: str) -> str:
        """The hex sha256 of the parameters and `text`."""
        digest = self._base.copy()
        digest.update(text.encode("utf-8", "surrogatepass"))
        return digest.hexdigest()


class MemoryCache:
    """A bounded LRU whose entries expire `ttl` seconds after they were stored."""

    __slots__ = ("_clock", "_entries", "_size", "_ttl")

    def __init__(
        self, size: int, ttl: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._size = size if ttl > 0 else 0
        self._ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, Spans]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Spans | None:
        """The stored spans, or None when absent or expired."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, spans = entry
        if expires <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return spans

    def put(self, key: str, spans: Spans) -> None:
        """Store `spans`, evicting the least recently used entry past the bound."""
        if self._size <= 0:
            return
        self._entries[key] = (self._clock() + self._ttl, spans)
        self._entries.move_to_end(key)
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)


class RedisCache:
    """The shared tier: spans as JSON under `gatewayd:presidio:<key>`, expiring with ttl."""

    __slots__ = ("_breaker", "_client", "_error", "_filter", "_hit", "_miss", "_timeout", "_ttl_ms")

    def __init__(self, client: RedisClient, config: PresidioFilterConfig) -> None:
        self._client = client
        # The cache must never cost more than the call it saves: a Redis that
        # does not answer within this is treated as down.
        self._timeout = min(_REDIS_TIMEOUT, config.timeout)
        self._filter = config.name
        self._ttl_ms = max(1, int(config.cache_ttl * 1000))
        self._breaker = CircuitBreaker(config.breaker, on_change=self._on_change)
        self._hit = PRESIDIO_CACHE.labels(filter=config.name, tier="redis", result="hit")
        self._miss = PRESIDIO_CACHE.labels(filter=config.name, tier="redis", result="miss")
        self._error = PRESIDIO_CACHE.labels(filter=config.name, tier="redis", result="error")

    async def get_many(self, keys: Sequence[str]) -> list[Spans | None]:
        """Spans per key, None for a miss; every key misses while Redis is failing."""
        if not self._breaker.allow():
            self._error.inc(len(keys))
            return [None] * len(keys)
        try:
            # One GET per key rather than MGET: on a cluster the keys live in
            # many slots. The client writes them together all the same.
            async with asyncio.timeout(self._timeout):
                values = await asyncio.gather(*(self._get(key) for key in keys))
        except (RedisUnavailable, RedisReplyError, TimeoutError) as exc:
            self._failed(exc)
            self._error.inc(len(keys))
            return [None] * len(keys)
        self._breaker.record_success()
        found = [decode(value) for value in values]
        hits = sum(spans is not None for spans in found)
        self._hit.inc(hits)
        self._miss.inc(len(found) - hits)
        return found

    async def put_many(self, items: Sequence[tuple[str, Spans]]) -> None:
        """Store fresh results for the other instances; a failure is counted, not raised."""
        if not self._breaker.allow():
            return
        try:
            async with asyncio.timeout(self._timeout):
                await asyncio.gather(*(self._set(key, spans) for key, spans in items))
        except (RedisUnavailable, RedisReplyError, TimeoutError) as exc:
            self._failed(exc)
            self._error.inc(len(items))
            return
        self._breaker.record_success()

    async def _get(self, key: str) -> bytes | None:
        name = REDIS_PREFIX + key
        value: bytes | None = await self._client.call("GET", name, key=name)
        return value

    async def _set(self, key: str, spans: Spans) -> None:
        name = REDIS_PREFIX + key
        await self._client.call("SET", name, encode(spans), "PX", self._ttl_ms, key=name)

    def _failed(self, exc: BaseException) -> None:
        self._breaker.record_failure()
        log.debug("presidio cache %s: redis failed: %s", self._filter, type(exc).__name__)

    def _on_change(self, state: BreakerState) -> None:
        if state is BreakerState.OPEN:
            log.warning("presidio cache %s: redis unavailable, memory only", self._filter)
        elif state is BreakerState.CLOSED:
            log.info("presidio cache %s: redis back", self._filter)


def encode(spans: Spans) -> bytes:
    """Spans as the JSON stored in Redis: `[[entity, start, end, score], ...]`."""
    return orjson.dumps([[s.entity, s.start, s.end, s.score] for s in spans])


def decode(value: bytes | str | None) -> Spans | None:
    """Spans from a Redis value; anything unreadable (foreign, truncated) is a miss."""
    if value is None:
        return None
    try:
        rows = orjson.loads(value)
        return tuple(Span(str(e), int(s), int(n), float(c)) for e, s, n, c in rows)
    except (orjson.JSONDecodeError, TypeError, ValueError):
        return None
