"""The rate limiter the proxy asks: which limits apply, which backend decides, what clients see.

Two lifetimes meet here. The `Limiter` (backends, and so every budget) lives
as long as the process: a SIGHUP must not hand every client a fresh budget.
`Budgets` belongs to one config generation and says which limits apply to a
route and a client; a reload that changes a rate applies it to the budgets
as they stand, since a budget is only a timestamp.

Limits resolve client over route over the `ratelimit` defaults. A route with
its own `ratelimit` has its own budgets; the others share one per key.

With `backend: redis`, busy keys are decided on this instance's leases of
their Redis budgets (gatewayd.ratelimit.leases), the rest in Redis. A Redis
that fails or is slower than redis_timeout is left alone for a second (so a
dead Redis costs one timeout per second, not one per request) and each
decision meanwhile follows on_backend_error: this process's own budgets
(allow, counted) or 503 (deny).
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from typing import Any

from gatewayd.config.schema import Config, Limits, RateLimitConfig, RouteConfig
from gatewayd.errors import RateLimited, RateLimiterUnavailable
from gatewayd.identity import Identity
from gatewayd.observability import metrics
from gatewayd.ratelimit.backend import Answer, Ask, Backend
from gatewayd.ratelimit.gcra import Rate
from gatewayd.ratelimit.leases import Leases
from gatewayd.ratelimit.memory import MemoryBackend
from gatewayd.ratelimit.redis_backend import RedisBackend
from gatewayd.redis_client import RedisClients

log = logging.getLogger(__name__)

# How long a failed Redis is not asked again.
_RETRY_BACKEND = 1.0


@dataclass(frozen=True, slots=True)
class Plan:
    """The limits one request is held to, and whose budgets they are."""

    scope: str
    limits: Limits
    requests: Rate | None
    tokens: Rate | None
    max_concurrent: int
    # A concurrency slot whose holder died (kill -9) frees itself after this:
    # no request of the generation lives longer.
    lease_for: float


class Budgets:
    """Which limits apply, per route and client, for one config generation."""

    def __init__(self, config: Config) -> None:
        self._config = config.ratelimit
        totals = [u.total_timeout for u in config.upstreams.values()]
        self._lease_for = max(totals, default=0.0) + config.server.read_timeout
        self._plans: dict[tuple[str, str | None], Plan | None] = {}

    @property
    def config(self) -> RateLimitConfig:
        return self._config

    def plan(self, route: RouteConfig, identity: Identity) -> Plan | None:
        """The plan for `identity` on `route`, or None when no limit applies."""
        client = identity.client
        memo = (route.name, client.name if client is not None else None)
        if memo not in self._plans:
            self._plans[memo] = self._make(route, identity)
        return self._plans[memo]

    def _make(self, route: RouteConfig, identity: Identity) -> Plan | None:
        limits = self._config.limits
        scope = "*"
        if route.ratelimit is not None:
            limits, scope = route.ratelimit.over(limits), route.name
        if identity.client is not None:
            limits = identity.client.limits.over(limits)
        rpm, tpm = limits.requests_per_minute or 0, limits.tokens_per_minute or 0
        concurrent = limits.max_concurrent or 0
        if not (rpm or tpm or concurrent):
            return None
        burst = limits.burst if limits.burst is not None else max(1, rpm // 10)
        return Plan(
            scope=scope,
            limits=limits,
            requests=Rate.per_minute(rpm, burst) if rpm else None,
            # A whole minute of tokens at once: a single request may reserve thousands.
            tokens=Rate.per_minute(tpm, tpm) if tpm else None,
            max_concurrent=concurrent,
            lease_for=self._lease_for,
        )


@dataclass(slots=True)
class Grant:
    """A request let through: what it took, from where, and its headers."""

    ask: Ask
    # None when nothing was taken: shadow mode let through a refused request.
    backend: Backend | None
    answer: Answer
    plan: Plan

    def headers(self) -> dict[str, str]:
        """OpenAI's x-ratelimit-* family for the budgets this request was held to."""
        return _headers(self.plan, self.answer)


class Limiter:
    """The process's budgets: in memory, or in Redis with memory to fall back on."""

    def __init__(self, config: RateLimitConfig, redis: RedisClients) -> None:
        self.local = MemoryBackend(config.max_keys)
        self.shared: Leases | None = None
        if config.backend == "redis" and config.redis_url is not None:
            backend = RedisBackend(redis.client(config.redis_url), config.redis_timeout)
            self.shared = Leases(backend, config.max_keys)
        self._skip_until = 0.0

    async def warm(self) -> None:
        """Open the Redis connection before serving, when there is one."""
        if self.shared is not None:
            await self.shared.warm()

    def status(self) -> dict[str, Any]:
        """The backend that decides and how it is doing, for /health/detailed."""
        return self.shared.status() if self.shared is not None else self.local.status()

    async def acquire(
        self, plan: Plan, identity: Identity, cost: int, config: RateLimitConfig, route: str
    ) -> Grant:
        """Take from `identity`'s budgets, or raise RateLimited (or, with
        on_backend_error deny, RateLimiterUnavailable). In shadow mode a
        request it would refuse goes through, taking nothing."""
        ask = Ask(
            key=f"{plan.scope}:{identity.limit_key}",
            requests=plan.requests,
            tokens=plan.tokens,
            cost=cost,
            max_concurrent=plan.max_concurrent,
            # Unique, not secret: no getrandom() per request, and none at all
            # without a concurrency limit.
            lease=f"{random.getrandbits(64):016x}" if plan.max_concurrent else "",
            lease_for=plan.lease_for,
        )
        backend: Backend | None
        if plan.tokens is not None and cost > plan.tokens.capacity:
            # No wait would make it fit (OpenAI says "request too large").
            backend, answer = None, Answer("tokens", 0.0, None, None)
            error = _too_large(plan, cost)
        else:
            backend, answer = await self._decide(ask, config)
            if answer.refused is None:
                return Grant(ask, backend, answer, plan)
            error = _limited(plan, answer)
        if config.shadow:
            metrics.child(metrics.RATELIMIT_SHADOW, route, answer.refused or "").inc()
            return Grant(ask, None, answer, plan)
        metrics.child(metrics.RATELIMIT_REJECTIONS, route, answer.refused or "").inc()
        raise error

    async def _decide(self, ask: Ask, config: RateLimitConfig) -> tuple[Backend, Answer]:
        shared = self.shared
        if shared is None:
            return self.local, self.local.decide(ask)
        failure: RateLimiterUnavailable
        if time.monotonic() < self._skip_until:
            failure = RateLimiterUnavailable("skipped")
        else:
            try:
                answer = await shared.acquire(ask)
            except RateLimiterUnavailable as exc:
                failure = exc
            else:
                self._recovered()
                return shared, answer
            self._backend_failed(failure.kind)
        metrics.child(metrics.RATELIMIT_BACKEND_ERRORS, failure.kind).inc()
        if config.on_backend_error == "deny":
            raise failure
        return self.local, self.local.decide(ask)

    def _backend_failed(self, kind: str) -> None:
        if self._skip_until == 0.0:
            log.warning("rate limiter: redis failed (%s); on_backend_error applies", kind)
        self._skip_until = time.monotonic() + _RETRY_BACKEND

    def _recovered(self) -> None:
        if self._skip_until:
            self._skip_until = 0.0
            log.info("rate limiter: redis is back")

    async def settle(self, grant: Grant, used: int | None) -> None:
        """The request is over: settle its tokens to `used` and free its slot."""
        ask, backend = grant.ask, grant.backend
        if backend is None or (ask.tokens is None and not ask.max_concurrent):
            return
        await backend.settle(ask, used)

    async def close(self) -> None:
        """Finish what is still being settled in Redis."""
        if self.shared is not None:
            await self.shared.settled()


def _limited(plan: Plan, answer: Answer) -> RateLimited:
    limit = answer.refused or "requests"
    if limit == "requests":
        what = f"{plan.limits.requests_per_minute} requests per minute"
    elif limit == "tokens":
        what = f"{plan.limits.tokens_per_minute} tokens per minute"
    else:
        what = f"{plan.max_concurrent} requests at once"
    wait = max(answer.retry_after, 0.001)
    message = f"rate limit reached: {what}; try again in {duration(wait)}"
    headers = _headers(plan, answer)
    headers["Retry-After"] = str(max(1, math.ceil(wait)))
    headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
    return RateLimited(message, limit=limit, headers=headers)


def _too_large(plan: Plan, cost: int) -> RateLimited:
    message = (
        f"the request may use {cost} tokens, more than the limit of"
        f" {plan.limits.tokens_per_minute} tokens per minute allows at once;"
        " lower max_tokens or shorten the prompt"
    )
    # Waiting cannot help: the OpenAI SDKs honour x-should-retry.
    return RateLimited(message, limit="tokens", headers={"x-should-retry": "false"})


def _headers(plan: Plan, answer: Answer) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, limit, take in (
        ("requests", plan.limits.requests_per_minute, answer.requests),
        ("tokens", plan.limits.tokens_per_minute, answer.tokens),
    ):
        if take is not None and limit:
            headers[f"x-ratelimit-limit-{name}"] = str(limit)
            headers[f"x-ratelimit-remaining-{name}"] = str(take.remaining)
            headers[f"x-ratelimit-reset-{name}"] = duration(take.reset)
    return headers


def duration(seconds: float) -> str:
    """A wait as OpenAI writes it in x-ratelimit-reset-*: 250ms, 1.5s, 6m0s."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text
