"""The wire to a Presidio analyzer: its REST API, its limits and its failures.

`POST /analyze` takes `{"text", "language", "entities", "score_threshold",
"allow_list"}` and answers `[{"entity_type", "start", "end", "score"}]`; since
analyzer 2.2.361 `text` may be a list, answered by a list of such lists. Every
failure leaves here as a `FilterError` whose kind is one of timeout, connect,
http, breaker_open, overloaded, invalid_response; no message carries text.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import aiohttp
import orjson
from yarl import URL

from gatewayd.breaker import BreakerState, CircuitBreaker
from gatewayd.config.schema import PresidioFilterConfig
from gatewayd.errors import FilterError
from gatewayd.guardrails.types import FilterHealth, Span
from gatewayd.observability.metrics import PRESIDIO_CALLS, PRESIDIO_DURATION, PRESIDIO_TEXTS
from gatewayd.upstream.outcome import (
    CONNECT_FAILURE,
    INVALID,
    RESET,
    TIMEOUT,
    Progress,
    failure_kind,
)
from gatewayd.upstream.transport import Origin, PooledTransport

Spans = tuple[Span, ...]

_JSON = ("Content-Type", "application/json")


class AnalyzerClient:
    """Calls one analyzer through a bounded pool, a slot semaphore and a breaker."""

    def __init__(self, config: PresidioFilterConfig) -> None:
        self._name = config.name
        self._url = config.url
        base = URL(config.url)
        # Messages name the analyzer by host and port only: a URL may carry credentials.
        self._where = f"{base.host}:{base.port}"
        self._timeout = config.timeout
        self._batch = config.batch
        self._max_in_flight = config.max_in_flight
        self._queue_timeout = config.queue_timeout
        self._slots = asyncio.Semaphore(config.max_in_flight)
        self.breaker = CircuitBreaker(config.breaker)
        params: dict[str, object] = {
            "language": config.language,
            "score_threshold": config.score_threshold,
        }
        if config.entities:
            params["entities"] = list(config.entities)
        if config.allow_list:
            params["allow_list"] = list(config.allow_list)
        self._params = params
        self._calls = PRESIDIO_CALLS.labels(filter=config.name)
        self._texts = PRESIDIO_TEXTS.labels(filter=config.name)
        self._duration = PRESIDIO_DURATION.labels(filter=config.name)
        self._transport: PooledTransport | None = None
        self._origin: Origin | None = None

    async def start(self) -> None:
        """Open the pool: one connection per slot, plus one for health checks."""
        self._transport = PooledTransport(
            limit=self._max_in_flight + 1, dns_ttl=300, keepalive=30, connect_timeout=self._timeout
        )
        self._origin = self._transport.origin(self._url)

    async def close(self) -> None:
        """Close the pool and its connections."""
        if self._transport is not None:
            await self._transport.close()
            self._transport = None

    async def analyze(self, texts: Sequence[str]) -> list[Spans]:
        """Spans for each text: one call in batch mode, else one concurrent call per text."""
        if self._batch:
            return await self._call(list(texts), texts)
        answers = await asyncio.gather(
            *(self._call(text, (text,)) for text in texts), return_exceptions=True
        )
        results: list[Spans] = []
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
            results.extend(answer)
        return results

    async def health(self) -> FilterHealth:
        """Probe `GET /health`; the breaker is reported as it stands, not changed."""
        started = time.perf_counter()
        try:
            status, _ = await self._exchange("GET", "/health", None, b"")
        except (TimeoutError, aiohttp.ClientError) as exc:
            return self._health(False, None, _error_kind(exc))
        latency_ms = (time.perf_counter() - started) * 1000
        if status != 200:
            return self._health(False, latency_ms, "http")
        return self._health(True, latency_ms, None)

    async def _call(self, wire_text: str | list[str], texts: Sequence[str]) -> list[Spans]:
        if self.breaker.state is BreakerState.OPEN:
            raise self._breaker_open()
        await self._acquire()
        try:
            # Checked again with a slot in hand: in half-open this claims the probe.
            if not self.breaker.allow():
                raise self._breaker_open()
            self._calls.inc()
            self._texts.inc(len(texts))
            started = time.perf_counter()
            try:
                answer = await self._post({**self._params, "text": wire_text})
                # A garbled answer is the analyzer's failure as much as a 500.
                batched = isinstance(wire_text, list)
                results = self._parse(answer if batched else [answer], texts)
            except (FilterError, asyncio.CancelledError):
                # A cancelled call counts too, or an abandoned half-open probe
                # would hold its slot and keep the breaker shut for good.
                self.breaker.record_failure()
                raise
            finally:
                self._duration.observe(time.perf_counter() - started)
            self.breaker.record_success()
            return results
        finally:
            self._slots.release()

    async def _acquire(self) -> None:
        if not self._slots.locked():
            await self._slots.acquire()
            return
        try:
            async with asyncio.timeout(self._queue_timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise FilterError(
                self._name,
                "overloaded",
                f"no free slot within {self._queue_timeout * 1000:.0f} ms"
                f" ({self._max_in_flight} calls in flight)",
            ) from None

    async def _post(self, payload: dict[str, object]) -> object:
        try:
            status, body = await self._exchange("POST", "/analyze", _JSON, orjson.dumps(payload))
        except (TimeoutError, aiohttp.ClientError) as exc:
            kind = _error_kind(exc)
            raise FilterError(self._name, kind, self._describe(kind, exc)) from exc
        if status != 200:
            raise FilterError(self._name, "http", f"analyzer at {self._where} answered {status}")
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise self._invalid("body is not JSON") from exc

    def _parse(self, raw: object, texts: Sequence[str]) -> list[Spans]:
        if not isinstance(raw, list) or len(raw) != len(texts):
            raise self._invalid("expected one result list per text")
        return [self._spans(item, text) for item, text in zip(raw, texts, strict=True)]

    def _spans(self, raw: object, text: str) -> Spans:
        if not isinstance(raw, list):
            raise self._invalid("expected a list of results")
        spans: list[Span] = []
        for item in raw:
            span = _span(item, len(text))
            if span is None:
                raise self._invalid("a result lacks entity_type, start, end or score in range")
            spans.append(span)
        return resolve_overlaps(spans)

    async def _exchange(
        self, method: str, path: str, header: tuple[str, str] | None, body: bytes
    ) -> tuple[int, bytes]:
        """One call's status and whole body, within the filter's timeout."""
        if self._transport is None or self._origin is None:
            raise RuntimeError(f"presidio filter {self._name} used before start()")
        fields = [header] if header is not None else []
        deadline = asyncio.get_running_loop().time() + self._timeout
        reply = await self._transport.send(
            self._origin, method, path, fields, body, deadline=deadline, progress=Progress()
        )
        try:
            return reply.status, await reply.read()
        finally:
            reply.release()

    def _describe(self, kind: str, exc: BaseException) -> str:
        if kind == "timeout":
            return f"no answer from {self._where} within {self._timeout * 1000:.0f} ms"
        if kind == "connect":
            return f"cannot reach analyzer at {self._where}: {type(exc).__name__}"
        return f"analyzer at {self._where} failed mid-response: {type(exc).__name__}"

    def _invalid(self, why: str) -> FilterError:
        return FilterError(self._name, "invalid_response", f"analyzer at {self._where}: {why}")

    def _breaker_open(self) -> FilterError:
        return FilterError(
            self._name,
            "breaker_open",
            f"analyzer circuit open, next probe in {self.breaker.retry_after():.1f}s",
        )

    def _health(self, healthy: bool, latency_ms: float | None, error: str | None) -> FilterHealth:
        return FilterHealth(healthy, latency_ms, self.breaker.state.value, error)


def resolve_overlaps(spans: list[Span]) -> Spans:
    """Keep the best of overlapping spans (highest score, then longest), ordered by start.

    Presidio reports every recognizer's view, so an e-mail address also comes
    back as a URL inside it; one text range must get one placeholder.
    """
    if len(spans) < 2:
        return tuple(spans)
    kept: list[Span] = []
    for span in sorted(spans, key=lambda s: (-s.score, s.start - s.end, s.start)):
        if all(span.end <= k.start or span.start >= k.end for k in kept):
            kept.append(span)
    kept.sort(key=lambda s: s.start)
    return tuple(kept)


def _span(item: object, length: int) -> Span | None:
    if not isinstance(item, dict):
        return None
    entity = item.get("entity_type")
    start = item.get("start")
    end = item.get("end")
    score = item.get("score", 1.0)
    # `type(...) is int` refuses booleans, which isinstance would let through.
    if (
        isinstance(entity, str)
        and type(start) is int
        and type(end) is int
        and 0 <= start < end <= length
        and isinstance(score, int | float)
    ):
        return Span(entity, start, end, float(score))
    return None


# The upstream client's failure kinds in FilterError's words; a connection
# dropped mid-call is "connect" as it always was here.
_KINDS = {CONNECT_FAILURE: "connect", TIMEOUT: "timeout", RESET: "connect", INVALID: "http"}


def _error_kind(exc: BaseException) -> str:
    """timeout, connect or http for an aiohttp failure, by the one shared table."""
    return _KINDS[failure_kind(exc) or INVALID]
