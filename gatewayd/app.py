"""make_app: the routes and every resource as a cleanup_ctx.

There is no middleware: the proxy handler does its own accounting, so the
request path reads top to bottom in one place. Resources unwind in reverse:
the audit writer is set up first and closed last, so the events of the final
requests still land. While it serves, the cyclic garbage collector runs
less often (`_GC_YOUNG`).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator

from aiohttp import web

from gatewayd.audit.writer import AuditWriter
from gatewayd.errors import MethodNotAllowed
from gatewayd.exchange import error_response
from gatewayd.headers import REQUEST_ID, request_id_from
from gatewayd.observability import health, metrics
from gatewayd.proxy import Handler, make_handler
from gatewayd.ratelimit.limiter import Limiter
from gatewayd.redis_client import RedisClients
from gatewayd.runtime import RuntimeHolder

RUNTIME = web.AppKey("runtime", RuntimeHolder)
AUDIT = web.AppKey("audit", AuditWriter)
LIMITER = web.AppKey("limiter", Limiter)
REDIS = web.AppKey("redis", RedisClients)


def make_app(
    holder: RuntimeHolder, audit: AuditWriter, limiter: Limiter, redis: RedisClients
) -> web.Application:
    """The gateway's application around an (unstarted) runtime, audit writer and limiter.

    The limiter and the Redis connections are the process's, not the
    runtime's: budgets outlive reloads, and every generation shares the
    connections.
    """
    app = web.Application(handler_args={"max_field_size": 16384})
    app[RUNTIME] = holder
    app[AUDIT] = audit
    app[LIMITER] = limiter
    app[REDIS] = redis
    app[health.HEALTH] = health.HealthSources(holder, audit, limiter)
    app.cleanup_ctx.append(_audit_ctx)
    app.cleanup_ctx.append(_redis_ctx)
    app.cleanup_ctx.append(_runtime_ctx)
    app.cleanup_ctx.append(_gc_ctx)
    # The gateway's own paths: GET (and so HEAD), never proxied.
    reserved: tuple[tuple[str, Handler], ...] = (
        ("/health", health.live),
        ("/health/ready", health.ready),
        ("/health/detailed", health.detailed),
        ("/metrics", _metrics),
    )
    for path, handler in reserved:
        app.router.add_get(path, handler)
        # Without this, other methods fall through to the catch-all below and
        # are forwarded upstream.
        app.router.add_route("*", path, _reserved_method)
    app.router.add_route("*", "/{tail:.*}", make_handler(holder, audit, limiter))
    return app


async def _reserved_method(request: web.Request) -> web.Response:
    """405 for a method other than GET or HEAD on a reserved path."""
    error = MethodNotAllowed(f"{request.path} answers GET and HEAD only")
    response = error_response(error, request_id_from(request.headers))
    response.headers["Allow"] = "GET, HEAD"
    return response


async def _audit_ctx(app: web.Application) -> AsyncIterator[None]:
    writer = app[AUDIT]
    await writer.start()
    yield
    await writer.close()


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    # Closed after the runtime, whose caches use them too.
    await app[LIMITER].warm()
    yield
    await app[LIMITER].close()
    await app[REDIS].close()


async def _runtime_ctx(app: web.Application) -> AsyncIterator[None]:
    holder = app[RUNTIME]
    await holder.current.start()
    yield
    # By now the server has drained in-flight requests (shutdown_timeout).
    await holder.current.close()


# Live container objects allocated since the last young-generation
# collection that trigger the next (CPython's default: 700). Requests free
# nearly all they allocate by reference counting, but 64 in flight hold a few
# thousand objects at once, so the default collected ~115 times a second
# (with 11 middle and one 25 ms full collection), found no garbage and cost
# 6-7% of the CPU. Above the working set, a run of 20,000 requests at c=64
# made a handful.
_GC_YOUNG = 10_000


async def _gc_ctx(app: web.Application) -> AsyncIterator[None]:
    threshold = gc.get_threshold()
    gc.set_threshold(_GC_YOUNG, *threshold[1:])
    yield
    gc.set_threshold(*threshold)


async def _metrics(request: web.Request) -> web.Response:
    # Rendering walks every series; keep it off the loop that serves traffic.
    body = await asyncio.to_thread(metrics.exposition)
    return web.Response(
        body=body,
        content_type="text/plain",
        charset="utf-8",
        headers={REQUEST_ID: request_id_from(request.headers)},
    )
