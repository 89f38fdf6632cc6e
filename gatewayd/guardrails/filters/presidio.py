"""The Presidio filter: a remote filter that asks a Presidio analyzer about texts.

A request's texts go through three steps, cheapest first: the in-process LRU,
then (when configured) the Redis tier shared by every gatewayd instance, then
one call to the analyzer for whatever is left. A multi-turn chat therefore
sends only its new messages. A text that another request is already having
analysed is not sent again: the second request waits for the first one's
answer (single flight).

The lookups past the memory tier run in a task of their own, so one
request giving up (a client disconnecting) never fails the others waiting on
the same texts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from gatewayd.config.schema import OnError, PresidioFilterConfig
from gatewayd.guardrails.filters.presidio_cache import KeyMaker, MemoryCache, RedisCache, Spans
from gatewayd.guardrails.filters.presidio_client import AnalyzerClient
from gatewayd.guardrails.types import FilterHealth, Span
from gatewayd.observability.metrics import PRESIDIO_CACHE
from gatewayd.redis_client import RedisClients


class PresidioFilter:
    """Finds Presidio's entities (EMAIL_ADDRESS, IBAN_CODE, ...) in batches of texts."""

    def __init__(self, config: PresidioFilterConfig, redis: RedisClients | None = None) -> None:
        self.name = config.name
        self.on_error: OnError | None = config.on_error
        self._config = config
        self._key = KeyMaker(config)
        self._memory = MemoryCache(config.cache_size, config.cache_ttl)
        self._client = AnalyzerClient(config)
        self._redis: RedisCache | None = None
        # The process's shared connections; without them, connections of its own.
        self._own_redis = redis is None
        self._redis_clients = redis if redis is not None else RedisClients()
        self._inflight: dict[str, asyncio.Future[Spans]] = {}
        self._fills: set[asyncio.Task[None]] = set()
        self._hit = PRESIDIO_CACHE.labels(filter=config.name, tier="memory", result="hit")
        self._miss = PRESIDIO_CACHE.labels(filter=config.name, tier="memory", result="miss")

    async def start(self) -> None:
        """Open the analyzer's connection pool and, with redis_url, the shared cache."""
        await self._client.start()
        if self._config.redis_url and self._config.cache_ttl > 0:
            client = self._redis_clients.client(self._config.redis_url)
            self._redis = RedisCache(client, self._config)

    async def close(self) -> None:
        """Abandon lookups still running, then close the pool and the Redis client."""
        for task in self._fills:
            task.cancel()
        await asyncio.gather(*self._fills, return_exceptions=True)
        await self._client.close()
        self._redis = None
        if self._own_redis:
            await self._redis_clients.close()

    async def health(self) -> FilterHealth:
        """Probe the analyzer's GET /health and report the breaker's state."""
        return await self._client.health()

    async def scan_batch(self, texts: Sequence[str]) -> list[list[Span]]:
        """Spans for each text, in order; raises FilterError when the analyzer fails."""
        keys: list[str | None] = []
        found: dict[str, Spans] = {}
        waiting: dict[str, asyncio.Future[Spans]] = {}
        todo: dict[str, str] = {}
        for text in texts:
            # Nothing to find in blank text; the stock analyzer even refuses "".
            if not text or text.isspace():
                keys.append(None)
                continue
            key = self._key(text)
            keys.append(key)
            if key in found or key in waiting:
                continue
            spans = self._memory.get(key)
            if spans is not None:
                self._hit.inc()
                found[key] = spans
                continue
            self._miss.inc()
            future = self._inflight.get(key)
            if future is None:
                future = asyncio.get_running_loop().create_future()
                self._inflight[key] = future
                todo[key] = text
            waiting[key] = future
        if todo:
            task = asyncio.create_task(self._fill(todo))
            self._fills.add(task)
            task.add_done_callback(self._fills.discard)
        if waiting:
            # wait() leaves the futures alone when this caller is cancelled;
            # other requests may be waiting on them too.
            await asyncio.wait(waiting.values())
            for key, future in waiting.items():
                found[key] = future.result()
        return [[] if key is None else list(found[key]) for key in keys]

    async def _fill(self, todo: dict[str, str]) -> None:
        """Answer the futures of `todo` (key -> text), then share fresh results via Redis."""
        try:
            fresh = await self._lookup(todo)
        except Exception as exc:  # noqa: BLE001 - handed to every waiting request, which raises it
            for key in todo:
                self._fail(key, exc)
            return
        finally:
            # Keys are left only when cancelled (close() at shutdown).
            for key in todo:
                future = self._inflight.pop(key, None)
                if future is not None and not future.done():
                    future.cancel()
        if fresh and self._redis is not None:
            await self._redis.put_many(fresh)

    async def _lookup(self, todo: dict[str, str]) -> list[tuple[str, Spans]]:
        """Settle what Redis knows, then what the analyzer finds; each key leaves `todo`."""
        if self._redis is not None:
            cached = await self._redis.get_many(list(todo))
            for key, spans in zip(list(todo), cached, strict=True):
                if spans is not None:
                    self._settle(key, spans)
                    del todo[key]
        if not todo:
            return []
        results = await self._client.analyze(list(todo.values()))
        fresh = list(zip(todo, results, strict=True))
        for key, spans in fresh:
            self._settle(key, spans)
        todo.clear()
        return fresh

    def _settle(self, key: str, spans: Spans) -> None:
        self._memory.put(key, spans)
        future = self._inflight.pop(key, None)
        if future is not None and not future.done():
            future.set_result(spans)

    def _fail(self, key: str, exc: Exception) -> None:
        future = self._inflight.pop(key, None)
        if future is not None and not future.done():
            future.set_exception(exc)
            # Marks the exception retrieved: when every waiter was cancelled
            # nobody reads it, and asyncio would log it as lost.
            future.exception()
