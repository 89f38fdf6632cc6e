"""Everything a config generation needs to serve, built once, swapped whole.

The handler reads `holder.current` once per request and uses that Runtime to
the end, so a reload never changes routes, upstreams or policies under a
request in flight (an open stream included). The old Runtime is closed only
after its last request has finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol, runtime_checkable

from gatewayd.config.schema import Config
from gatewayd.guardrails.filters import build_filter
from gatewayd.guardrails.pipeline import Guard
from gatewayd.guardrails.types import Filter
from gatewayd.identity import Clients
from gatewayd.ratelimit.limiter import Budgets
from gatewayd.redis_client import RedisClients
from gatewayd.routing import RouteTable
from gatewayd.upstream.client import Upstream

log = logging.getLogger(__name__)


@runtime_checkable
class Startable(Protocol):
    """A filter holding connections (Presidio): opened before serving, closed after."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


@dataclass(eq=False)
class Runtime:
    config: Config
    generation: int
    routes: RouteTable
    upstreams: Mapping[str, Upstream]
    filters: Mapping[str, Filter]
    guards: Mapping[str, Guard]
    clients: Clients
    budgets: Budgets
    _inflight: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    @contextlib.contextmanager
    def serving(self) -> Iterator[Runtime]:
        """Count a request in flight on this generation for its whole life."""
        self._inflight += 1
        self._idle.clear()
        try:
            yield self
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def longest_request(self) -> float:
        """No request of this generation can outlive this many seconds: each is
        bounded by its upstream's total_timeout (plus the body read before it)."""
        totals = [u.total_timeout for u in self.config.upstreams.values()]
        return max(totals, default=0.0) + self.config.server.read_timeout

    async def start(self) -> None:
        """Open upstream pools and remote filters; on failure close what opened."""
        opened: list[Startable] = []
        try:
            for resource in self._resources():
                await resource.start()
                opened.append(resource)
        except BaseException:
            for resource in reversed(opened):
                await resource.close()
            raise

    async def close(self, drain_timeout: float = 0.0) -> None:
        """Wait (bounded) for in-flight requests, then close in reverse order."""
        if self._inflight and drain_timeout > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain_timeout):
                    await self._idle.wait()
        errors: list[BaseException] = []
        for resource in reversed(list(self._resources())):
            try:
                await resource.close()
            except Exception as exc:  # noqa: BLE001 - close the rest, report all
                errors.append(exc)
        for error in errors:
            log.warning("closing generation %d: %s", self.generation, type(error).__name__)

    def _resources(self) -> Iterator[Startable]:
        yield from self.upstreams.values()
        for f in self.filters.values():
            if isinstance(f, Startable):
                yield f


def build_runtime(config: Config, generation: int, redis: RedisClients) -> Runtime:
    """Compile a validated config: regexes, route table, clients (not yet started).
    Redis connections come from `redis`, the process's, shared by every generation."""
    filters = {name: build_filter(cfg, redis) for name, cfg in config.filters.items()}
    guards = {name: Guard(policy, filters) for name, policy in config.policies.items()}
    return Runtime(
        config=config,
        generation=generation,
        routes=RouteTable(config.routes.values()),
        upstreams=MappingProxyType({n: Upstream(u) for n, u in config.upstreams.items()}),
        filters=MappingProxyType(filters),
        guards=MappingProxyType(guards),
        clients=Clients(config.clients),
        budgets=Budgets(config),
    )


class RuntimeHolder:
    """The one mutable reference: which Runtime new requests get."""

    __slots__ = ("current",)

    def __init__(self, runtime: Runtime) -> None:
        self.current = runtime
