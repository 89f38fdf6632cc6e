"""make_app: routes, the one edge middleware, and every resource as a cleanup_ctx.

Resources unwind in reverse: the audit writer is set up first and closed last,
so events from the final requests of the config generations still land.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from gatewayd.audit.event import AuditEvent
from gatewayd.audit.writer import AuditWriter
from gatewayd.config.schema import ServerConfig
from gatewayd.errors import HTTPError
from gatewayd.exchange import CLIENT_CLOSED, Exchange, error_response
from gatewayd.headers import REQUEST_ID, request_id_from
from gatewayd.observability import health, metrics
from gatewayd.observability.logging import ACCESS
from gatewayd.proxy import EXCHANGE, handle
from gatewayd.runtime import RuntimeHolder

log = logging.getLogger(__name__)

RUNTIME = web.AppKey("runtime", RuntimeHolder)
AUDIT = web.AppKey("audit", AuditWriter)

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_app(holder: RuntimeHolder, audit: AuditWriter) -> web.Application:
    """The gateway's application around an (unstarted) runtime and audit writer."""
    app = web.Application(middlewares=[edge], handler_args={"max_field_size": 16384})
    app[RUNTIME] = holder
    app[AUDIT] = audit
    app[health.HEALTH] = health.HealthSources(holder, audit)
    app.cleanup_ctx.append(_audit_ctx)
    app.cleanup_ctx.append(_runtime_ctx)
    app.router.add_get("/health", health.live)
    app.router.add_get("/health/ready", health.ready)
    app.router.add_get("/health/detailed", health.detailed)
    app.router.add_get("/metrics", _metrics)
    app.router.add_route("*", "/{tail:.*}", _proxy)
    return app


async def _audit_ctx(app: web.Application) -> AsyncIterator[None]:
    writer = app[AUDIT]
    await writer.start()
    yield
    await writer.close()


async def _runtime_ctx(app: web.Application) -> AsyncIterator[None]:
    holder = app[RUNTIME]
    await holder.current.start()
    yield
    # By now the server has drained in-flight requests (shutdown_timeout).
    await holder.current.close()


async def _metrics(request: web.Request) -> web.Response:
    body = await asyncio.to_thread(metrics.exposition)
    return web.Response(body=body, content_type="text/plain", charset="utf-8")


async def _proxy(request: web.Request) -> web.StreamResponse:
    with request.app[RUNTIME].current.serving() as runtime:
        return await handle(request, runtime)


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


@web.middleware
async def edge(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Request id, errors as OpenAI JSON, and the access line, metrics and
    audit event every proxied request leaves, however it ends."""
    request_id = request_id_from(request.headers)
    if request.path in health.RESERVED:
        response = await handler(request)
        response.headers[REQUEST_ID] = request_id
        return response
    server = request.app[RUNTIME].current.config.server
    ex = Exchange(
        request_id=request_id,
        client=client_identity(request, server),
        method=request.method,
        path=request.path,
    )
    request[EXCHANGE] = ex
    try:
        response = await handler(request)
    except HTTPError as exc:
        ex.error = exc.code
        response = error_response(exc, request_id)
        if exc.status in (408, 413):
            # The rest of the body is still coming; don't read it to reuse the connection.
            response.force_close()
    except web.HTTPException as exc:
        # aiohttp's own refusals (e.g. a malformed request line) in OpenAI shape.
        err = HTTPError(exc.reason)
        err.status, err.type, err.code = exc.status, "invalid_request_error", "invalid_request"
        ex.error = err.code
        response = error_response(err, request_id)
    except (asyncio.CancelledError, ConnectionResetError):
        ex.status, ex.error = CLIENT_CLOSED, "client_closed"
        _finish(request, ex)
        raise
    except Exception:
        log.exception("unhandled error", extra={"fields": {"request_id": request_id}})
        err = HTTPError("the gateway failed to handle the request")
        ex.error = err.code
        response = error_response(err, request_id)
    ex.status = response.status
    _finish(request, ex)
    return response


def _finish(request: web.Request, ex: Exchange) -> None:
    duration = ex.duration
    route = ex.route or "none"
    metrics.REQUESTS.labels(route, str(ex.status)).inc()
    metrics.REQUEST_DURATION.labels(route).observe(duration)
    summary = ex.summary
    action = summary.action.value if summary is not None and summary.action else None
    if ex.unchecked and action is None:
        action = "unchecked"
    ACCESS.info(
        "request",
        extra={
            "fields": {
                "request_id": ex.request_id,
                "method": ex.method,
                "path": ex.path,
                "route": ex.route,
                "status": ex.status,
                "duration_ms": round(duration * 1000, 3),
                "upstream": ex.upstream,
                "attempts": ex.attempts,
                "action": action,
            }
        },
    )
    request.app[AUDIT].emit(
        AuditEvent(
            request_id=ex.request_id,
            client=ex.client,
            method=ex.method,
            path=ex.path,
            route=ex.route,
            upstream=ex.upstream,
            model=ex.model,
            stream=ex.stream,
            status=ex.status,
            duration_ms=round(duration * 1000, 3),
            upstream_ms=ex.upstream_ms,
            attempts=ex.attempts,
            bytes_in=ex.bytes_in,
            bytes_out=ex.bytes_out,
            prompt_tokens=ex.prompt_tokens,
            completion_tokens=ex.completion_tokens,
            policy=ex.policy,
            action=action or "allow",
            findings=summary.as_dict() if summary is not None else {},
            error=ex.error,
        )
    )
