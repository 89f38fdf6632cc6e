"""The pooled client of one upstream: breaker, target choice, retries, timeouts.

    send() -> breaker allows? -> next target -> attempt -> headers received
                 |  no: 503                      |  failure or retryable status
                 |                               v
                 |            retry budget, attempts, deadline, breaker allow?
                 |                  yes: sleep (jittered), next target, again
                 |                  no: last response as is, or the error below

Failures leave this module as gatewayd.errors (`raise ... from exc`):

    connection refused/reset/dropped, DNS, connect timeout   UpstreamUnavailable 502
    no response headers in time (read or total timeout)      UpstreamTimeout 504
    malformed response (never retried)                       UpstreamUnavailable 502
    breaker open                                             UpstreamUnavailable 503

A connect timeout counts as "connect", not "timeout": the request never left,
so retrying it is as safe as retrying a refused connection.

The breaker hears about each attempt as it ends with its response headers:
5xx, connect failures and timeouts are failures, anything else a success. A
body that breaks off later while the proxy streams it is not counted here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp import hdrs
from multidict import CIMultiDict

from gatewayd.breaker import BreakerState, CircuitBreaker
from gatewayd.config.schema import UpstreamConfig
from gatewayd.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from gatewayd.observability.metrics import CIRCUIT_OPEN, UPSTREAM_DURATION, UPSTREAM_RETRIES
from gatewayd.upstream.budget import RetryBudget
from gatewayd.upstream.retry import (
    CONNECT,
    RETRY_AFTER_STATUSES,
    TIMEOUT,
    RetryPolicy,
    parse_retry_after,
)
from gatewayd.upstream.targets import Targets

log = logging.getLogger(__name__)

# The upstream sees what the client sent, not aiohttp's defaults; in particular
# an Accept-Encoding the client never asked for would come back compressed
# while bodies are relayed without decompressing.
_SKIP_AUTO_HEADERS = (hdrs.ACCEPT, hdrs.ACCEPT_ENCODING, hdrs.CONTENT_TYPE, hdrs.USER_AGENT)
# Host comes from the target, the length from the (possibly rewritten) body,
# and Authorization only ever from the upstream's own api_key.
_NOT_FORWARDED = (hdrs.HOST, hdrs.CONTENT_LENGTH, hdrs.TRANSFER_ENCODING, hdrs.AUTHORIZATION)
_PROTOCOL = "protocol"


# Weight of the newest sample in the latency moving average (about the last 20).
_LATENCY_WEIGHT = 0.05


@dataclass(slots=True)
class UpstreamResponse:
    """An upstream's answer with its headers read and its body still unread."""

    # The caller streams the body and must release() or close() it.
    response: aiohttp.ClientResponse
    attempts: int
    upstream_ms: float
    target: str


class Upstream:
    """One configured upstream with its own connection pool and breaker."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.name = config.name
        self._config = config
        self._targets = Targets(config.urls)
        self._policy = RetryPolicy(config.retry)
        self._budget = RetryBudget(config.retry.budget_ratio)
        self._auth = f"Bearer {config.api_key}" if config.api_key else None
        self._duration = UPSTREAM_DURATION.labels(upstream=self.name)
        self._circuit_open = CIRCUIT_OPEN.labels(upstream=self.name)
        self._circuit_open.set(0)
        self.breaker = CircuitBreaker(config.breaker, on_change=self._on_breaker_change)
        self._session: aiohttp.ClientSession | None = None
        self._in_flight = 0
        # Moving average of time to response headers, for /health/detailed:
        # probing an LLM API from a health check would cost real calls.
        self._latency_ms: float | None = None

    async def start(self) -> None:
        """Create the pooled session; needs the running event loop."""
        if self._session is not None:
            return
        cfg = self._config
        connector = aiohttp.TCPConnector(
            limit=cfg.pool_size,
            limit_per_host=cfg.pool_size_per_host,
            keepalive_timeout=cfg.keepalive,
            use_dns_cache=True,
            ttl_dns_cache=int(cfg.dns_ttl),
            resolver=aiohttp.AsyncResolver(),
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            trust_env=False,
        )

    async def close(self) -> None:
        """Close the session and its pooled connections."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def send(
        self,
        method: str,
        path_qs: str,
        headers: Mapping[str, str] | CIMultiDict[str],
        body: bytes,
    ) -> UpstreamResponse:
        """Send one request, retrying as configured, and return the response
        whose headers arrived; raises an UpstreamError when there is none."""
        session = self._session
        if session is None:
            raise RuntimeError(f"upstream {self.name} was not started")
        if not self.breaker.allow():
            raise UpstreamUnavailable(f"upstream {self.name}: circuit breaker open", status=503)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._config.total_timeout
        out_headers = self._outgoing_headers(headers)
        data = body or None
        first = self._targets.first()
        self._budget.record_request()
        self._in_flight += 1
        # A breaker permit (allow() returned True) not yet answered with a
        # success or failure; see the except clause below.
        answered = False
        attempt = 0
        try:
            while True:
                target = self._targets.pick(first, attempt)
                attempt += 1
                started = loop.time()
                if started >= deadline:
                    exhausted = UpstreamTimeout(f"upstream {self.name}: total timeout exhausted")
                    exhausted.attempts = attempt - 1
                    raise exhausted
                try:
                    resp = await session.request(
                        method,
                        target.url(path_qs),
                        headers=out_headers,
                        data=data,
                        allow_redirects=False,
                        timeout=self._timeout(deadline - started),
                    )
                except (TimeoutError, aiohttp.ClientError) as exc:
                    self._duration.observe(loop.time() - started)
                    self.breaker.record_failure()
                    answered = True
                    reason = _failure_reason(exc)
                    delay = None
                    if self._policy.on_failure(reason):
                        delay = self._retry_delay(reason, attempt, deadline, None)
                    if delay is None:
                        raise self._error(reason, attempt) from exc
                else:
                    elapsed = loop.time() - started
                    self._duration.observe(elapsed)
                    self._track_latency(elapsed * 1000.0)
                    status = resp.status
                    if status >= 500:
                        self.breaker.record_failure()
                    else:
                        self.breaker.record_success()
                    answered = True
                    delay = None
                    if self._policy.on_status(status):
                        retry_after = None
                        if status in RETRY_AFTER_STATUSES:
                            retry_after = parse_retry_after(resp.headers.get(hdrs.RETRY_AFTER))
                        delay = self._retry_delay(str(status), attempt, deadline, retry_after)
                    if delay is None:
                        self._watch_release(resp)
                        return UpstreamResponse(resp, attempt, elapsed * 1000.0, target.label)
                    resp.release()
                answered = False
                await asyncio.sleep(delay)
        except BaseException:
            self._in_flight -= 1
            # In half-open each permit is one of few probe slots; one that is
            # never answered (cancelled client, deadline) would keep the
            # breaker refusing forever. Unknown outcome: assume the worst.
            if not answered and self.breaker.state is BreakerState.HALF_OPEN:
                self.breaker.record_failure()
            raise

    def status(self) -> dict[str, object]:
        """State for /health/detailed; holds no credentials."""
        requests, retries = self._budget.counts()
        state = self.breaker.state
        latency = self._latency_ms
        return {
            "healthy": state is not BreakerState.OPEN,
            "latency_ms": round(latency, 3) if latency is not None else None,
            "breaker": state.value,
            "retry_after": round(self.breaker.retry_after(), 3),
            "targets": self._targets.labels,
            "in_flight": self._in_flight,
            "window_requests": requests,
            "window_retries": retries,
        }

    def _track_latency(self, ms: float) -> None:
        previous = self._latency_ms
        self._latency_ms = ms if previous is None else previous + _LATENCY_WEIGHT * (ms - previous)

    def _outgoing_headers(self, headers: Mapping[str, str] | CIMultiDict[str]) -> CIMultiDict[str]:
        out = CIMultiDict(headers)
        for name in _NOT_FORWARDED:
            out.popall(name, None)
        if self._auth is not None:
            out[hdrs.AUTHORIZATION] = self._auth
        return out

    def _timeout(self, remaining: float) -> aiohttp.ClientTimeout:
        # total also bounds reading the body after send() returns, so the
        # deadline covers the whole exchange, streaming included.
        return aiohttp.ClientTimeout(
            total=remaining,
            sock_connect=self._config.connect_timeout,
            sock_read=self._config.read_timeout,
        )

    def _retry_delay(
        self, reason: str, attempt: int, deadline: float, retry_after: float | None
    ) -> float | None:
        """Seconds to wait before another attempt, or None if `attempt` was the last."""
        if attempt >= self._policy.attempts or not self._budget.allows_retry():
            return None
        delay = self._policy.delay(attempt - 1, retry_after)
        if delay is None or asyncio.get_running_loop().time() + delay >= deadline:
            return None
        if not self.breaker.allow():
            return None
        self._budget.record_retry()
        UPSTREAM_RETRIES.labels(upstream=self.name, reason=reason).inc()
        log.debug("upstream %s: attempt %d failed (%s), retrying", self.name, attempt, reason)
        return delay

    def _error(self, reason: str, attempts: int) -> UpstreamError:
        tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
        error: UpstreamError
        if reason == TIMEOUT:
            error = UpstreamTimeout(f"upstream {self.name} timed out ({tries})")
        elif reason == CONNECT:
            error = UpstreamUnavailable(f"upstream {self.name} unreachable ({tries})")
        else:
            error = UpstreamUnavailable(f"upstream {self.name} sent an invalid response")
        error.attempts = attempts
        return error

    def _watch_release(self, resp: aiohttp.ClientResponse) -> None:
        # In flight until the caller has read or dropped the body, which is
        # when aiohttp hands the connection back to the pool.
        conn = resp.connection
        if conn is None:
            self._in_flight -= 1
        else:
            conn.add_callback(self._released)

    def _released(self) -> None:
        self._in_flight -= 1

    def _on_breaker_change(self, state: BreakerState) -> None:
        closed = state is BreakerState.CLOSED
        self._circuit_open.set(0 if closed else 1)
        level = logging.INFO if closed else logging.WARNING
        log.log(level, "upstream %s: circuit breaker %s", self.name, state.value)


def _failure_reason(exc: BaseException) -> str:
    """connect, timeout or protocol, for an exception raised before response headers."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return CONNECT
    if isinstance(exc, TimeoutError):
        return TIMEOUT
    if isinstance(exc, aiohttp.ClientConnectionError):
        return CONNECT
    return _PROTOCOL
