"""/health (alive), /health/ready (should traffic come here?) and /health/detailed.

Readiness fails only for what would make requests fail: the gateway
draining, or a guardrail service unreachable that a policy blocks on. A dead
upstream is not a readiness failure: every gateway instance shares it, and
taking them all out of a load balancer helps nobody. Nor is the audit
database: while it is away events wait in the spool, and /health/detailed
shows the sink's health, the spool's size and its oldest event's age.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import orjson
from aiohttp import web

from gatewayd import __version__
from gatewayd.audit.writer import AuditWriter
from gatewayd.headers import REQUEST_ID, request_id_from
from gatewayd.ratelimit.limiter import Limiter
from gatewayd.runtime import Runtime, RuntimeHolder

RESERVED = frozenset({"/health", "/health/ready", "/health/detailed", "/metrics"})


@runtime_checkable
class Probed(Protocol):
    """A filter that can say whether the service behind it answers."""

    async def health(self) -> Any: ...


class CertificateStatus(Protocol):
    """The listener's TLS (gatewayd.tls.TlsListener): what its certificate says."""

    def status(self) -> dict[str, Any]: ...


@dataclass
class HealthSources:
    holder: RuntimeHolder
    audit: AuditWriter
    limiter: Limiter
    draining: bool = False
    started: float = 0.0
    # Set by the daemon when it serves HTTPS.
    tls: CertificateStatus | None = None

    def __post_init__(self) -> None:
        self.started = time.time()


HEALTH = web.AppKey("health", HealthSources)


def _json(request: web.Request, payload: object, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(payload),
        status=status,
        content_type="application/json",
        headers={REQUEST_ID: request_id_from(request.headers)},
    )


async def live(request: web.Request) -> web.Response:
    """The process is up and its loop turns."""
    return _json(request, {"status": "ok"})


async def _probe_filters(runtime: Runtime) -> dict[str, dict[str, Any]]:
    probed = {name: f for name, f in runtime.filters.items() if isinstance(f, Probed)}
    results = await asyncio.gather(*(f.health() for f in probed.values()))
    out: dict[str, dict[str, Any]] = {}
    for (name, f), result in zip(probed.items(), results, strict=True):
        entry: dict[str, Any] = (
            dataclasses.asdict(result)
            if dataclasses.is_dataclass(result) and not isinstance(result, type)
            else {"healthy": bool(result)}
        )
        entry["on_error"] = f.on_error
        out[name] = entry
    return out


def _blocking_filters(runtime: Runtime) -> set[str]:
    """Filters whose failure refuses requests: on_error block, directly or by policy."""
    names: set[str] = set()
    for policy in runtime.config.policies.values():
        for name in (*policy.input, *policy.output):
            f = runtime.filters[name]
            if (f.on_error or policy.on_error) == "block":
                names.add(name)
    return names


async def ready(request: web.Request) -> web.Response:
    """200 when requests here can succeed, else 503 with the reasons."""
    sources = request.app[HEALTH]
    runtime = sources.holder.current
    reasons: list[str] = []
    if sources.draining:
        reasons.append("draining")
    blocking = _blocking_filters(runtime)
    if blocking:
        for name, state in (await _probe_filters(runtime)).items():
            if name in blocking and not state.get("healthy", False):
                reasons.append(f"filter {name} unreachable")
    if reasons:
        return _json(request, {"status": "unavailable", "reasons": reasons}, status=503)
    return _json(request, {"status": "ready"})


async def detailed(request: web.Request) -> web.Response:
    """Every dependency: health, latency, breaker states, audit queue, generation."""
    sources = request.app[HEALTH]
    runtime = sources.holder.current
    return _json(
        request,
        {
            "status": "draining" if sources.draining else "ok",
            "version": __version__,
            # Which worker answered, when server.workers > 1 (each has its own
            # breakers, audit queue and config generation).
            "pid": os.getpid(),
            "uptime_s": round(time.time() - sources.started, 1),
            "config": {
                "generation": runtime.generation,
                "source": str(runtime.config.source),
                "inflight": runtime.inflight,
            },
            "upstreams": {name: u.status() for name, u in runtime.upstreams.items()},
            "filters": await _probe_filters(runtime),
            "audit": sources.audit.status(),
            "ratelimit": sources.limiter.status(),
            # Subject, expiry and fingerprint of the certificate new
            # connections get; null over plain HTTP.
            "tls": sources.tls.status() if sources.tls is not None else None,
        },
    )
