"""The record of one request as it goes through the gateway.

The proxy handler fills it in as it goes; `record` turns it into the access
log line, the request metrics and the audit event when the request ends,
however it ends (answered, refused, failed, or the client went away).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import time
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from gatewayd.audit.event import AuditEvent
from gatewayd.audit.writer import AuditWriter
from gatewayd.config.schema import ServerConfig
from gatewayd.errors import HTTPError
from gatewayd.guardrails.types import Summary
from gatewayd.headers import REQUEST_ID
from gatewayd.observability import metrics
from gatewayd.observability.logging import ACCESS

# nginx's code for "the client closed the connection before the answer".
CLIENT_CLOSED = 499


@dataclass(slots=True)
class Exchange:
    request_id: str
    method: str
    path: str
    started: float = field(default_factory=time.perf_counter)
    route: str | None = None
    upstream: str | None = None
    policy: str | None = None
    model: str | None = None
    stream: bool = False
    status: int = 0
    attempts: int = 0
    upstream_ms: float | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    summary: Summary | None = None
    error: str | None = None
    # Response headers already went out: a failure can no longer become an
    # error response, only an error event (SSE) or a cut connection.
    prepared: bool = False
    # Model, stream flag and token counts are read only for the audit event.
    audited: bool = True

    @property
    def action(self) -> str:
        """What the guardrails did: allow, monitor, redact, block, or unchecked."""
        summary = self.summary
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


def client_identity(request: web.Request, server: ServerConfig) -> str:
    """Who is asking, without naming them: a hash of the bearer key, else the IP.

    X-Forwarded-For is believed only from a trusted proxy, and then its
    right-most address that is not itself a trusted proxy.
    """
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer " and len(auth) > 7:
        return "key:" + hashlib.sha256(auth[7:].strip().encode()).hexdigest()[:16]
    peer = request.remote or ""
    if server.trusted_proxies and _trusted(peer, server):
        for hop in reversed(request.headers.get("X-Forwarded-For", "").split(",")):
            hop = hop.strip()
            if hop and not _trusted(hop, server):
                return "ip:" + hop
    return "ip:" + peer


def _trusted(address: str, server: ServerConfig) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in server.trusted_proxies)


def record(ex: Exchange, request: web.Request, server: ServerConfig, audit: AuditWriter) -> None:
    """The request is over: count it, log one access line, queue its audit event."""
    duration = time.perf_counter() - ex.started
    route = ex.route or "none"
    metrics.child(metrics.REQUESTS, route, str(ex.status)).inc()
    metrics.child(metrics.REQUEST_DURATION, route).observe(duration)
    duration_ms = round(duration * 1000, 3)
    if ACCESS.isEnabledFor(logging.INFO):
        ACCESS.info(
            "request",
            extra={
                "fields": {
                    "request_id": ex.request_id,
                    "method": ex.method,
                    "path": ex.path,
                    "route": ex.route,
                    "status": ex.status,
                    "duration_ms": duration_ms,
                    "upstream": ex.upstream,
                    "attempts": ex.attempts,
                    "action": ex.action,
                }
            },
        )
    if not audit.enabled:
        return
    audit.emit(
        AuditEvent(
            request_id=ex.request_id,
            client=client_identity(request, server),
            method=ex.method,
            path=ex.path,
            route=ex.route,
            upstream=ex.upstream,
            model=ex.model,
            stream=ex.stream,
            status=ex.status,
            duration_ms=duration_ms,
            upstream_ms=round(ex.upstream_ms, 3) if ex.upstream_ms is not None else None,
            attempts=ex.attempts,
            bytes_in=ex.bytes_in,
            bytes_out=ex.bytes_out,
            prompt_tokens=ex.prompt_tokens,
            completion_tokens=ex.completion_tokens,
            policy=ex.policy,
            action=ex.action,
            findings=ex.summary.as_dict() if ex.summary is not None else {},
            error=ex.error,
        )
    )
