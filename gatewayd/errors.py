"""gatewayd's exceptions, one tree; third-party errors are translated into it
at the boundary where they happen (`raise ... from exc`).

    GatewayError
    ├── ConfigError                  invalid configuration; carries every Problem
    ├── HTTPError                    answered to the client in OpenAI's error shape
    │   ├── BadRequest               400 invalid_json, invalid_request
    │   ├── NotFound                 404 not_found
    │   ├── MethodNotAllowed         405 method_not_allowed (+ Allow)
    │   ├── RequestTimeout           408 request_timeout (a slow client)
    │   ├── RequestTooLarge          413 request_too_large
    │   ├── InvalidApiKey            401 invalid_api_key (+ WWW-Authenticate)
    │   ├── ModelNotAllowed          403 model_not_allowed
    │   ├── RateLimited              429 rate_limit_exceeded (+ Retry-After)
    │   ├── RateLimiterUnavailable   503 rate_limiter_unavailable (Redis failed,
    │   │                            on_backend_error=deny); `kind` says why
    │   ├── GuardrailViolation       400 guardrail_violation (a policy blocked it)
    │   ├── GuardrailUnavailable     503 guardrail_unavailable (a filter failed, on_error=block)
    │   ├── UnreadableAnswer         502 unsupported_response (an answer the policy cannot read)
    │   └── UpstreamError
    │       ├── UpstreamUnavailable  502 unreachable, or dropped after sending / 503 every
    │       │                        target's breaker open (+ Retry-After)
    │       │   └── UnreadableUpstreamAnswer  502 an answer the guardrails cannot parse
    │       └── UpstreamTimeout      504
    ├── FilterError                  a remote filter failed; the pipeline applies on_error
    └── AuditSinkError               an audit sink could not store a batch; `kind` says why
        ├── AuditSinkUnavailable     unreachable, too slow or failing: spool, retry later
        └── AuditBatchRejected       the rows themselves were refused: retried one by one

A guardrail *block* is a verdict, decided not raised, inside the pipeline; the
proxy turns a blocking verdict into GuardrailViolation only to answer it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import orjson


class GatewayError(Exception):
    """Base of everything gatewayd raises on purpose."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a config file, printed as `path:line: key: message`."""

    path: Path
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else f"{self.path}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(GatewayError):
    """The configuration is invalid; `problems` lists each issue found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class HTTPError(GatewayError):
    """An error the gateway answers itself, in the OpenAI error shape."""

    status = 500
    type = "server_error"
    code = "internal_error"
    # Extra headers of the error response; a class sets fixed ones, an
    # instance may carry its own (a Retry-After of this moment).
    headers: Mapping[str, str] = MappingProxyType({})

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def payload(self) -> dict[str, dict[str, str | None]]:
        """The OpenAI error object SDKs parse: {"error": {message, type, param, code}}."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def sse_event(self) -> bytes:
        """The error as the one SSE event that ends a stream (SDKs raise APIError)."""
        return b"data: " + orjson.dumps(self.payload()) + b"\n\n"


class BadRequest(HTTPError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"

    def __init__(self, message: str, *, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.code = code


class NotFound(HTTPError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(HTTPError):
    """Only the methods the OpenAI API uses are forwarded: TRACE would echo the
    upstream's key back, and the others have no endpoint that takes them."""

    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"
    headers: Mapping[str, str] = MappingProxyType({"Allow": "GET, POST, DELETE"})


class RequestTimeout(HTTPError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class GuardrailViolation(HTTPError):
    status = 400
    type = "invalid_request_error"
    code = "guardrail_violation"


class UnreadableAnswer(HTTPError):
    """The upstream answered in a shape the policy cannot read, so it is not relayed.

    502 as it is the upstream's answer that failed; clients are told not to
    retry (the OpenAI SDKs honour `x-should-retry`): the completion was
    generated, and billed, already.
    """

    status = 502
    code = "unsupported_response"
    headers: Mapping[str, str] = MappingProxyType({"x-should-retry": "false"})


class RequestTooLarge(HTTPError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class InvalidApiKey(HTTPError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"
    headers: Mapping[str, str] = MappingProxyType({"WWW-Authenticate": 'Bearer realm="gatewayd"'})


class ModelNotAllowed(HTTPError):
    status = 403
    type = "invalid_request_error"
    code = "model_not_allowed"


class RateLimited(HTTPError):
    """A budget is spent. `type` names the limit, as OpenAI's own 429s do
    (requests, tokens), so clients can tell a request limit from a token one."""

    status = 429
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, limit: str, headers: Mapping[str, str]) -> None:
        super().__init__(message)
        self.type = limit
        self.headers = headers


class RateLimiterUnavailable(HTTPError):
    """The shared limiter (Redis) failed and ratelimit.on_backend_error is deny.
    `kind` is a fixed word for metrics and logs (timeout, connection, error)."""

    status = 503
    type = "server_error"
    code = "rate_limiter_unavailable"

    def __init__(self, kind: str) -> None:
        super().__init__("the rate limiter is unavailable; try again shortly")
        self.kind = kind


class GuardrailUnavailable(HTTPError):
    status = 503
    type = "server_error"
    code = "guardrail_unavailable"


class UpstreamError(HTTPError):
    type = "server_error"
    # Tries made before giving up, for the access log and the audit event.
    attempts = 0
    # The last attempt failed in a way retry.on allows retrying (or every
    # target was ejected): nothing reached the model, so a route's fallback may answer.
    retryable = False


class UpstreamUnavailable(UpstreamError):
    status = 502
    code = "upstream_unavailable"

    def __init__(
        self, message: str, *, status: int = 502, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        if headers is not None:
            self.headers = headers


class UnreadableUpstreamAnswer(UpstreamUnavailable):
    """An answer the guardrails had to read but could not: an encoding they cannot
    undo, or a body that is not the JSON object (or SSE stream) it must be.

    `reason` is a metric label (encoding, size, json). Clients are told not
    to retry: the completion was generated, and billed, already.
    """

    headers: Mapping[str, str] = MappingProxyType({"x-should-retry": "false"})

    def __init__(self, reason: str, message: str, *, attempts: int) -> None:
        super().__init__(message)
        self.reason = reason
        self.attempts = attempts


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class FilterError(GatewayError):
    """A remote filter could not answer; `kind` is a small fixed label
    (timeout, connect, http, breaker_open, overloaded, invalid_response)."""

    def __init__(self, filter_name: str, kind: str, message: str) -> None:
        super().__init__(f"filter {filter_name}: {kind}: {message}")
        self.filter_name = filter_name
        self.kind = kind


class AuditSinkError(GatewayError):
    """An audit sink could not store a batch; `kind` is a fixed word for logs and
    status (connect, timeout, ENOSPC, a SQLSTATE), never the driver's message,
    which may quote a value."""

    def __init__(self, kind: str, *, landed: int = 0) -> None:
        super().__init__(kind)
        self.kind = kind
        # Events of the batch stored before the failure (a file sink may have
        # appended some lines); a transactional sink always says 0.
        self.landed = landed


class AuditSinkUnavailable(AuditSinkError):
    """The sink cannot take writes now; the same batch may succeed later."""


class AuditBatchRejected(AuditSinkError):
    """The sink refused the data (a constraint, a bad value): retrying the whole
    batch would fail again, so its rows are tried one by one."""
