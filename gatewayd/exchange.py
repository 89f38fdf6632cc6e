"""The record of one request as it goes through the gateway.

The proxy handler fills it in; the edge middleware turns it into the access
log line, the request metrics and the audit event when the request ends,
however it ends (answered, refused, failed, or the client went away).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from gatewayd.errors import HTTPError
from gatewayd.guardrails.types import Summary
from gatewayd.headers import REQUEST_ID

# nginx's code for "the client closed the connection before the answer".
CLIENT_CLOSED = 499


@dataclass(slots=True)
class Exchange:
    request_id: str
    client: str
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
    unchecked: bool = False
    error: str | None = None

    @property
    def duration(self) -> float:
        return time.perf_counter() - self.started


def error_response(exc: HTTPError, request_id: str) -> web.Response:
    """The OpenAI-shaped JSON error SDKs know how to parse."""
    body = orjson.dumps(
        {
            "error": {
                "message": exc.message,
                "type": exc.type,
                "param": exc.param,
                "code": exc.code,
            }
        }
    )
    return web.Response(
        status=exc.status,
        body=body,
        content_type="application/json",
        headers={REQUEST_ID: request_id},
    )
