"""The pooled client of one upstream: per-target breakers, target choice,
retries, timeouts.

    send() -> a target whose breaker allows? -> attempt -> Outcome (upstream/outcome.py)
                 |  none: 503 + Retry-After          |
                 |                                   v
                 |      RetryPolicy.decide (upstream/retry.py), budget, next target's breaker
                 |            yes: wait (none when an untried target is left), again
                 |            no: the response as is, or the error below

Failures leave this module as gatewayd.errors (`raise ... from exc`):

    no connection (refused, DNS, connect timeout), or one   UpstreamUnavailable 502
      found closed before the request was written
    closed or reset after the request was sent              UpstreamUnavailable 502 ("may have
                                                              been processed")
    no response headers in time                             UpstreamTimeout 504
    malformed response (never retried)                      UpstreamUnavailable 502
    every target's breaker open                             UpstreamUnavailable 503 + Retry-After

Each target has its own breaker, which hears about each attempt on it as it
ends with its response headers: 5xx and every failure are failures, anything
else (429 included: the host is alive) a success. A body that breaks off later
while the proxy streams it is not counted here. The upstream is "open" only
while every target is.

A target that has not proven itself (it failed since its last success, or no
connection to it was ever made) takes at most as many attempts awaiting an
outcome as its breaker has failures left before opening: a dead one that
fails fast, and so always looks idle to Targets.ranked, is ejected after
exactly failure_threshold tries instead of drawing every pick until then.
When every target the breakers allow is capped, the least failing one takes
the request anyway; only while that one has never been reached (a burst at
start, before any connect result) does the request wait for the next connect
or outcome, at most a connect's time. One target alone is never capped.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Final

import aiohttp
from aiohttp import hdrs
from multidict import CIMultiDict

from gatewayd.breaker import BreakerState, CircuitBreaker
from gatewayd.config.schema import UpstreamConfig
from gatewayd.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from gatewayd.observability.metrics import CIRCUIT_OPEN, UPSTREAM_DURATION, UPSTREAM_RETRIES
from gatewayd.upstream.budget import RetryBudget
from gatewayd.upstream.outcome import (
    CONNECT,
    INVALID,
    RESET_BEFORE_REQUEST,
    TIMEOUT,
    Outcome,
    Progress,
    failure_kind,
)
from gatewayd.upstream.retry import RetryPolicy
from gatewayd.upstream.targets import Targets
from gatewayd.upstream.transport import Origin, PooledTransport, Reply, Transport

log = logging.getLogger(__name__)

# Host comes from the target, the length from the (possibly rewritten) body,
# and Authorization only ever from the upstream's own api_key.
_NOT_FORWARDED = (hdrs.HOST, hdrs.CONTENT_LENGTH, hdrs.TRANSFER_ENCODING, hdrs.AUTHORIZATION)
# A retry the budget refused, as a gatewayd_upstream_retries_total reason.
_BUDGET_EXHAUSTED = "budget_exhausted"


# Weight of the newest sample in the latency moving average (about the last 20).
_LATENCY_WEIGHT = 0.05
# _choose's answer when the request should wait for news of the attempts in flight.
_WAIT: Final = -1


@dataclass(slots=True)
class UpstreamResponse:
    """An upstream's answer with its headers read and its body still unread."""

    # The caller streams the body and must release() or close() it.
    response: Reply
    attempts: int
    upstream_ms: float
    target: str
    # The name of the upstream that answered (a route's fallback, perhaps).
    upstream: str
    # The status matched a retry condition: retries ran out, not the upstream's patience.
    retryable: bool


class Upstream:
    """One configured upstream with its own connection pool and a breaker per target."""

    def __init__(
        self,
        config: UpstreamConfig,
        *,
        transport: Transport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = config.name
        self.config = config
        self._targets = Targets(config.urls)
        self._policy = RetryPolicy(config.retry)
        self._budget = RetryBudget(config.retry.budget_ratio)
        self._auth = f"Bearer {config.api_key}" if config.api_key else None
        self._duration = UPSTREAM_DURATION.labels(upstream=self.name)
        self.breakers = tuple(
            CircuitBreaker(
                config.breaker,
                clock=clock,
                on_change=functools.partial(self._on_breaker_change, label),
            )
            for label in self._targets.labels
        )
        for label in self._targets.labels:
            CIRCUIT_OPEN.labels(upstream=self.name, target=label).set(0)
        self._threshold = config.breaker.failure_threshold
        # Tests' seams: a transport given here replaces the pool start() would
        # make, and `clock` steps the breakers' open_for.
        self._given = transport
        self._transport: Transport | None = None
        self._origins: tuple[Origin, ...] = ()
        self._in_flight = 0
        # Set when a target is reached or an attempt ends, for requests that
        # wait on _WAIT; None while nobody waits.
        self._news: asyncio.Event | None = None
        # Moving average of time to response headers, for /health/detailed:
        # probing an LLM API from a health check would cost real calls.
        self._latency_ms: float | None = None

    async def start(self) -> None:
        """Create the connection pool; needs the running event loop."""
        if self._transport is not None:
            return
        cfg = self.config
        transport = self._given or PooledTransport(
            limit=cfg.pool_size,
            limit_per_host=cfg.pool_size_per_host,
            keepalive=cfg.keepalive,
            dns_ttl=cfg.dns_ttl,
            connect_timeout=cfg.connect_timeout,
            read_timeout=cfg.read_timeout,
        )
        targets = self._targets
        self._origins = tuple(transport.origin(targets[i].base) for i in range(len(targets)))
        self._transport = transport

    async def close(self) -> None:
        """Close the pool and its connections."""
        transport, self._transport = self._transport, None
        if transport is not None:
            await transport.close()

    async def send(
        self,
        method: str,
        path_qs: str,
        headers: Mapping[str, str] | CIMultiDict[str],
        body: bytes,
    ) -> UpstreamResponse:
        """Send one request, retrying as configured, and return the response
        whose headers arrived; raises an UpstreamError when there is none."""
        transport = self._transport
        if transport is None:
            raise RuntimeError(f"upstream {self.name} was not started")
        targets = self._targets
        # Counted before a wait on _WAIT: the retries of the attempts ahead of
        # a waiting request draw on the budget its arrival adds to.
        self._budget.record_request()
        index = self._choose(())
        if index == _WAIT:
            index = await self._choose_later(())
        if index is None:
            raise self._all_open()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.total_timeout
        out_headers = self._outgoing_headers(headers)
        if not path_qs.startswith("/"):
            path_qs = "/" + path_qs
        tried: set[int] = set()
        self._in_flight += 1
        # The breaker whose permit (allow() returned True) is not yet answered
        # with a success or failure; see the except clause below.
        pending: CircuitBreaker | None = self.breakers[index]
        attempt = 0
        try:
            while True:
                target = self._targets[index]
                breaker = self.breakers[index]
                tried.add(index)
                attempt += 1
                started = loop.time()
                if started >= deadline:
                    exhausted = UpstreamTimeout(f"upstream {self.name}: total timeout exhausted")
                    exhausted.attempts = attempt - 1
                    raise exhausted
                # A target never reached before tells the requests waiting on it.
                progress = Progress(
                    None if targets.reached(index) else functools.partial(self._reach, index)
                )
                resp: Reply | None = None
                failure: BaseException | None = None
                kind = ""
                origin = self._origins[index]
                targets.begin(index)
                try:
                    resp = await transport.send(
                        origin,
                        method,
                        path_qs,
                        out_headers,
                        body,
                        deadline=deadline,
                        progress=progress,
                    )
                except BaseException as exc:
                    self._answered(index)
                    targets.end(index)
                    if not isinstance(exc, TimeoutError | aiohttp.ClientError):
                        raise
                    failure = exc
                    kind = failure_kind(exc) or INVALID
                    outcome = progress.outcome(kind)
                    breaker.record_failure()
                else:
                    self._answered(index)
                    outcome = Outcome.response(resp.status, resp.headers)
                    self._track_latency((loop.time() - started) * 1000.0)
                    if resp.status >= 500:
                        breaker.record_failure()
                    else:
                        breaker.record_success()
                elapsed = loop.time() - started
                self._duration.observe(elapsed)
                pending = None
                retryable = self._policy.retryable(outcome)
                delay = (
                    self._next_delay(outcome, attempt, deadline - loop.time(), tried)
                    if retryable
                    else None
                )
                following = self._choose(tried) if delay is not None else None
                if following == _WAIT:
                    following = await self._choose_later(tried)
                if following is None:
                    if resp is None:
                        error = self._error(outcome, kind, attempt)
                        error.retryable = retryable
                        raise error from failure
                    # In flight until the caller has read or dropped the body.
                    resp.on_done(functools.partial(self._released, index))
                    ms = elapsed * 1000.0
                    return UpstreamResponse(resp, attempt, ms, target.label, self.name, retryable)
                if resp is not None:
                    resp.release()
                    targets.end(index)
                free = following not in tried and not outcome.may_have_reached_model
                index, pending = following, self.breakers[following]
                self._count_retry(outcome, charged=not free)
                await asyncio.sleep(delay or 0.0)
        except BaseException:
            self._in_flight -= 1
            # In half-open each permit is one of few probe slots; one that is
            # never answered (cancelled client, deadline) would keep the
            # breaker refusing forever. Unknown outcome: assume the worst.
            if pending is not None and pending.state is BreakerState.HALF_OPEN:
                pending.record_failure()
            raise

    def status(self) -> dict[str, object]:
        """State for /health/detailed; holds no credentials. `breaker` is the
        upstream's: open when every target's is, closed when none is, else degraded."""
        requests, retries = self._budget.counts()
        states = [b.state for b in self.breakers]
        latency = self._latency_ms
        if all(state is BreakerState.OPEN for state in states):
            breaker = BreakerState.OPEN.value
        elif all(state is BreakerState.CLOSED for state in states):
            breaker = BreakerState.CLOSED.value
        else:
            breaker = "degraded"
        return {
            "healthy": breaker != BreakerState.OPEN.value,
            "latency_ms": round(latency, 3) if latency is not None else None,
            "breaker": breaker,
            "retry_after": round(self._retry_after(), 3),
            "targets": [
                {"target": label, "breaker": state.value, "retry_after": round(b.retry_after(), 3)}
                for label, state, b in zip(self._targets.labels, states, self.breakers, strict=True)
            ],
            "in_flight": self._in_flight,
            "window_requests": requests,
            "window_retries": retries,
        }

    def _choose(self, tried: Collection[int]) -> int | None:
        """The best target (Targets.ranked) that is not capped and whose breaker
        lets a call through; else the least failing capped one, or _WAIT while
        that one was never reached; None when every breaker refuses."""
        targets, breakers = self._targets, self.breakers
        if len(targets) == 1:
            # Nowhere else to send it: a cap could only delay the request.
            return 0 if breakers[0].allow() else None
        spare: int | None = None
        for index in targets.ranked(tried):
            if self._capped(index):
                if spare is None or breakers[index].failures < breakers[spare].failures:
                    spare = index
            elif breakers[index].allow():
                return index
        # Capped with no failure means never reached: what its attempts in
        # flight find out comes within a connect, so the request waits for it.
        # A capped breaker is closed, so it has no permit to take.
        if spare is not None and breakers[spare].failures == 0:
            return _WAIT
        return spare

    async def _choose_later(self, tried: Collection[int]) -> int | None:
        """_choose again after each connect or outcome, until it does not say _WAIT."""
        index: int | None = _WAIT
        while index == _WAIT:
            if self._news is None:
                self._news = asyncio.Event()
            await self._news.wait()
            index = self._choose(tried)
        return index

    def _capped(self, index: int) -> bool:
        """Is the target closed but unproven (failures since its last success,
        or never reached), with as many attempts awaiting an outcome as
        failures would open its breaker?"""
        breaker = self.breakers[index]
        failures = breaker.failures
        targets = self._targets
        if failures == 0 and targets.reached(index):
            return False
        # An open or half-open breaker is allow()'s to refuse.
        return (
            breaker.state is BreakerState.CLOSED
            and targets.awaiting(index) >= self._threshold - failures
        )

    def _reach(self, index: int) -> None:
        self._targets.reach(index)
        self._tell()

    def _answered(self, index: int) -> None:
        self._targets.answered(index)
        if self._news is not None:
            self._tell()

    def _tell(self) -> None:
        """Wake the requests waiting on _WAIT."""
        news, self._news = self._news, None
        if news is not None:
            news.set()

    def _next_delay(
        self, outcome: Outcome, attempt: int, remaining: float, tried: set[int]
    ) -> float | None:
        """Seconds to wait before another attempt, or None if this one is the last."""
        # The next pick is untried if some untried target's breaker is not open.
        fresh = any(
            i not in tried and b.state is not BreakerState.OPEN for i, b in enumerate(self.breakers)
        )
        delay = self._policy.decide(outcome, attempt, remaining, fresh_target=fresh)
        if delay is None:
            return None
        if fresh and not outcome.may_have_reached_model:
            # Nothing of the request reached a server and the next target is
            # one it has not tried: no server sees more than its share, so the
            # budget is not asked (at most one such retry per target).
            return delay
        if not self._budget.allows_retry():
            UPSTREAM_RETRIES.labels(upstream=self.name, reason=_BUDGET_EXHAUSTED).inc()
            return None
        return delay

    def _count_retry(self, outcome: Outcome, *, charged: bool) -> None:
        if charged:
            self._budget.record_retry()
        UPSTREAM_RETRIES.labels(upstream=self.name, reason=outcome.condition).inc()
        log.debug("upstream %s: attempt failed (%s), retrying", self.name, outcome.condition)

    def _retry_after(self) -> float:
        """Seconds until the first target lets a probe through (0 while one is usable)."""
        return min(b.retry_after() for b in self.breakers)

    def _all_open(self) -> UpstreamUnavailable:
        # Whole seconds, at least 1: Retry-After has no fractions, and 0
        # would invite an immediate retry that is refused again.
        wait = max(1, math.ceil(self._retry_after()))
        error = UpstreamUnavailable(
            f"upstream {self.name}: circuit breaker open on every target, next probe in {wait}s",
            status=503,
            headers={hdrs.RETRY_AFTER: str(wait)},
        )
        # Every target is ejected: what a route's fallback is for.
        error.retryable = True
        return error

    def _track_latency(self, ms: float) -> None:
        previous = self._latency_ms
        self._latency_ms = ms if previous is None else previous + _LATENCY_WEIGHT * (ms - previous)

    def _outgoing_headers(
        self, headers: Mapping[str, str] | CIMultiDict[str]
    ) -> list[tuple[str, str]]:
        out = CIMultiDict(headers)
        for name in _NOT_FORWARDED:
            out.popall(name, None)
        if self._auth is not None:
            out[hdrs.AUTHORIZATION] = self._auth
        return list(out.items())

    def _error(self, outcome: Outcome, kind: str, attempts: int) -> UpstreamError:
        tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
        error: UpstreamError
        if outcome.condition == INVALID:
            error = UpstreamUnavailable(f"upstream {self.name} sent an invalid response")
        elif outcome.may_have_reached_model:
            # The client's SDK would retry a 502 or 504 by itself: say why it may not want to.
            what = "timed out" if kind == TIMEOUT else "closed the connection"
            message = (
                f"upstream {self.name} {what} after the request was sent ({tries});"
                " the request may have been processed"
            )
            error = UpstreamTimeout(message) if kind == TIMEOUT else UpstreamUnavailable(message)
        elif kind == TIMEOUT and outcome.stage == CONNECT:
            error = UpstreamTimeout(f"upstream {self.name} timed out before connecting ({tries})")
        else:
            why = " (connection closed before use)" if outcome.stage == RESET_BEFORE_REQUEST else ""
            error = UpstreamUnavailable(f"upstream {self.name} unreachable ({tries}){why}")
        error.attempts = attempts
        return error

    def _released(self, index: int) -> None:
        self._in_flight -= 1
        self._targets.end(index)

    def _on_breaker_change(self, target: str, state: BreakerState) -> None:
        closed = state is BreakerState.CLOSED
        CIRCUIT_OPEN.labels(upstream=self.name, target=target).set(0 if closed else 1)
        level = logging.INFO if closed else logging.WARNING
        log.log(level, "upstream %s target %s: circuit breaker %s", self.name, target, state.value)
