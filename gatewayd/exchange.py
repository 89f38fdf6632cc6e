"""The record of one request as it goes through the gateway.

The proxy handler fills it in as it goes; `record` turns it into the access
log line and the request metrics, and queues it as the audit event, when the
request ends, however it ends (answered, refused, failed, or the client went
away).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from gatewayd.audit.event import AuditEvent
from gatewayd.audit.writer import AuditWriter
from gatewayd.errors import HTTPError
from gatewayd.guardrails.types import Summary
from gatewayd.headers import REQUEST_ID
from gatewayd.observability import metrics
from gatewayd.observability.logging import ACCESS
from gatewayd.ratelimit.limiter import Grant

# nginx's code for "the client closed the connection before the answer".
CLIENT_CLOSED = 499


@dataclass(slots=True, kw_only=True)
class Exchange(AuditEvent):
    """The audit event of a request in the making, with what only the request path needs.

    The proxy fills in the event's fields as it learns them; `record` adds
    the rest and queues this very object, so no field is copied by hand.
    """

    started: float = field(default_factory=time.perf_counter)
    summary: Summary | None = None
    # Response headers already went out: a failure can no longer become an
    # error response, only an error event (SSE) or a cut connection.
    prepared: bool = False
    # Model, stream flag and token counts are read for the audit event.
    audited: bool = True
    # What the rate limiter let this request take, given back when it ends.
    grant: Grant | None = None
    # The upstream was asked and answered 2xx: tokens may have been spent.
    generated: bool = False

    @property
    def counts_tokens(self) -> bool:
        """A token reservation is held: the answer's token counts settle it."""
        return self.grant is not None and self.grant.ask.tokens is not None


def action_of(summary: Summary | None) -> str:
    """What the guardrails did: allow, monitor, redact, block, or unchecked."""
    if summary is None:
        return "allow"
    if summary.action is not None:
        return summary.action.value
    return "unchecked" if summary.unchecked else "allow"


def error_response(exc: HTTPError, request_id: str) -> web.Response:
    """The OpenAI-shaped JSON error SDKs know how to parse."""
    return web.Response(
        status=exc.status,
        body=orjson.dumps(exc.payload()),
        content_type="application/json",
        headers={**exc.headers, REQUEST_ID: request_id},
    )


async def record(ex: Exchange, audit: AuditWriter) -> None:
    """The request is over: count it, log one access line, queue its audit event.

    Returns at once unless the audit queue is full and audit.on_full is block.
    """
    duration = time.perf_counter() - ex.started
    route = ex.route or "none"
    metrics.child(metrics.REQUESTS, route, str(ex.status)).inc()
    metrics.child(metrics.REQUEST_DURATION, route).observe(duration)
    ex.duration_ms = round(duration * 1000, 3)
    ex.action = action_of(ex.summary)
    if ACCESS.isEnabledFor(logging.INFO):
        ACCESS.info(
            "request",
            extra={
                "fields": {
                    "request_id": ex.request_id,
                    "client": ex.client,
                    "method": ex.method,
                    "path": ex.path,
                    "route": ex.route,
                    "status": ex.status,
                    "duration_ms": ex.duration_ms,
                    "upstream": ex.upstream,
                    "attempts": ex.attempts,
                    "action": ex.action,
                }
            },
        )
    if not audit.enabled:
        return
    ex.ts = time.time()
    if ex.upstream_ms is not None:
        ex.upstream_ms = round(ex.upstream_ms, 3)
    if ex.summary is not None:
        ex.findings = ex.summary.as_dict()
    await audit.emit(ex)
