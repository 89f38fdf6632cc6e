"""The catch-all handler: the whole request path, top to bottom.

    identity (401) -> method -> normalise path -> route -> read body (bounded)
    -> model allow-list (403) -> rate limits (429) -> input guardrails
    -> upstream (breaker, retries, pool) -> output guardrails -> client

Bodies nobody changed are forwarded as the bytes that arrived; JSON is parsed
once and re-serialised only by a guardrail that rewrote it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict

from gatewayd.audit.writer import AuditWriter
from gatewayd.config.schema import Mode, ServerConfig
from gatewayd.errors import (
    GuardrailUnavailable,
    GuardrailViolation,
    HTTPError,
    InvalidApiKey,
    MethodNotAllowed,
    ModelNotAllowed,
    NotFound,
    RateLimited,
    RateLimiterUnavailable,
    RequestTimeout,
    RequestTooLarge,
    UnreadableUpstreamAnswer,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gatewayd.exchange import CLIENT_CLOSED, Exchange, error_response, record
from gatewayd.guardrails import endpoints
from gatewayd.guardrails.payload import Payload, read_payload
from gatewayd.guardrails.pipeline import Guard, RequestResult
from gatewayd.guardrails.query import read_query
from gatewayd.guardrails.types import Verdict
from gatewayd.headers import (
    REQUEST_ID,
    client_response_headers,
    request_id_from,
)
from gatewayd.identity import Identity, identify
from gatewayd.observability.metrics import UNREADABLE_ANSWERS, child
from gatewayd.ratelimit import tokens
from gatewayd.ratelimit.limiter import Limiter, Plan
from gatewayd.ratelimit.tokens import UsageEventStrip
from gatewayd.routing import normalize_path
from gatewayd.runtime import Runtime, RuntimeHolder
from gatewayd.upstream.fallback import send_routed
from gatewayd.upstream.transport import Reply

log = logging.getLogger(__name__)

SUMMARY_HEADER = "X-Gatewayd-Guardrail"

# Answers up to this size are read whole and sent in one write; larger or
# unsized ones are relayed chunk by chunk.
_BUFFER_LIMIT = 1024 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The methods the OpenAI API uses. TRACE would echo the upstream's key back;
# the others (HEAD, OPTIONS, PUT, PATCH, CONNECT) have no endpoint to reach.
_FORWARDED_METHODS = frozenset({"GET", "POST", "DELETE"})


def make_handler(holder: RuntimeHolder, audit: AuditWriter, limiter: Limiter) -> Handler:
    """The catch-all handler, bound to the live runtime, the audit writer and the limiter."""

    async def handle(request: web.Request) -> web.StreamResponse:
        """One proxied request, start to end: every way it can end is accounted."""
        runtime = holder.current
        ex = Exchange(
            request_id=request_id_from(request.headers), method=request.method, path=request.path
        )
        ex.audited = audit.enabled
        grant = None
        try:
            with runtime.serving():
                try:
                    response = await _proxy(request, runtime, limiter, ex)
                finally:
                    # However it ended, what the limiter granted goes back.
                    grant = ex.grant
                    await _settle(limiter, ex)
        except (asyncio.CancelledError, ConnectionResetError):
            ex.status, ex.error = CLIENT_CLOSED, "client_closed"
            await record(ex, audit)
            raise
        except Exception as exc:
            if isinstance(exc, HTTPError):
                error = exc
                if isinstance(exc, UpstreamError):
                    ex.attempts = exc.attempts
            else:
                log.exception("unhandled error", extra={"fields": {"request_id": ex.request_id}})
                error = HTTPError("the gateway failed to handle the request")
            ex.error = error.code
            if ex.prepared:
                # Status and headers are out. Re-raised, aiohttp closes the
                # connection: the client sees an incomplete body, not a whole one.
                await record(ex, audit)
                raise
            response = error_response(error, ex.request_id)
            if grant is not None:
                # The gateway's own errors on a limited route say where the budgets stand too.
                response.headers.update(grant.headers())
            if error.status in (408, 413):
                # The rest of the body may still be coming: don't read it to
                # keep the connection.
                response.force_close()
        ex.status = response.status
        await record(ex, audit)
        return response

    return handle


async def _proxy(
    request: web.Request, runtime: Runtime, limiter: Limiter, ex: Exchange
) -> web.StreamResponse:
    """Identify, route, limit, guard, forward and relay one request on one config generation."""
    identity = identify(request, runtime.config, runtime.clients)
    ex.client = identity.name
    if identity.client is None and runtime.config.auth.require_client_key:
        raise InvalidApiKey(
            "the client key is not known"
            if identity.has_key
            else "a client key is required: send it as Authorization: Bearer KEY"
        )
    if request.method not in _FORWARDED_METHODS:
        raise MethodNotAllowed(f"{request.method} is not forwarded: use GET, POST or DELETE")
    path, _, query = request.raw_path.partition("?")
    match = runtime.routes.match(normalize_path(path))
    if match is None:
        raise NotFound("no route matches the request path")
    route = match.route
    ex.route, ex.upstream = route.name, route.upstream
    guard = runtime.guards.get(route.policy) if route.policy else None
    if guard is not None and guard.policy.mode is Mode.OFF:
        guard = None

    body = await read_body(request, runtime.config.server)
    ex.bytes_in = len(body)
    plan = runtime.budgets.plan(route, identity)
    models = identity.client is not None and identity.client.models is not None
    endpoint, payload, doc = None, None, None
    if guard is not None:
        ex.policy = guard.policy.name
    if guard is not None or (models and body):
        # Read once, as its endpoint takes it: for the guardrails, and for
        # every model a client held to a list may name.
        endpoint = endpoints.find(request.method, match.upstream_path)
        if endpoint is not None:
            payload = read_payload(endpoint, request.headers.get("Content-Type", ""), body)
            doc = payload.doc
            if guard is not None and query:
                payload.query = read_query(query)
    if (
        guard is None
        and payload is None
        and body
        and (
            (plan is not None and plan.tokens is not None)
            or models
            or (ex.audited and _is_json(request.content_type))
        )
    ):
        doc = _parse_unguarded(body)
    _record_request(ex, doc)
    if models:
        _check_models(runtime, identity, body, payload, doc)
    strip = None
    if plan is not None:
        strip = await _limit(limiter, runtime, plan, identity, match.upstream_path, body, doc, ex)
    checked: RequestResult | None = None
    if guard is not None:
        checked = await _inspect(body, guard, endpoint, payload, ex)
        body = checked.body
    if strip is not None and doc is not None:
        # Asked for on the client's behalf, after the guardrails read what it sent.
        doc["stream_options"] = {**(doc.get("stream_options") or {}), "include_usage": True}
        body = orjson.dumps(doc)

    output_guard = (
        guard if checked is not None and guard is not None and guard.wants_answer(checked) else None
    )
    if payload is not None and payload.query is not None:
        # As the guardrails read it, not the bytes that came.
        query = payload.query.dump()
    path_qs = f"{match.upstream_path}?{query}" if query else match.upstream_path
    # An output guard reads the answer's text, so it must arrive uncompressed.
    sent = await send_routed(
        runtime.upstreams,
        route,
        request.method,
        path_qs,
        request.headers,
        ex.request_id,
        body,
        identity=output_guard is not None,
    )
    ex.attempts, ex.upstream_ms, ex.upstream = sent.attempts, sent.upstream_ms, sent.upstream
    upstream_config = runtime.upstreams[sent.upstream].config
    response = sent.response
    ex.generated = 200 <= response.status < 300
    try:
        out_headers = client_response_headers(response.headers, upstream_config)
        out_headers[REQUEST_ID] = ex.request_id
        if ex.grant is not None:
            out_headers.update(ex.grant.headers())
        media = _media_type(response.headers.get("Content-Type", ""))
        if output_guard is not None and checked is not None and 200 <= response.status < 300:
            result = await _relay_read(
                request, response, out_headers, media, output_guard, checked, ex, strip
            )
        elif media == _SSE:
            chunks = _upstream_chunks(response, ex)
            result = await _relay_stream(
                request, response, chunks, out_headers, output_guard, checked, ex, strip
            )
        else:
            # Errors and redirects too: they carry no model output, at most
            # the request (placeholders, not values) echoed in a message.
            result = await _relay_plain(request, response, out_headers, media, ex)
        return result
    finally:
        # An answer not read to the end (client gone, output blocked) must not
        # go back to the pool: closing also stops the upstream's generation.
        if response.content.at_eof():
            response.release()
        else:
            response.close()


def _check_models(
    runtime: Runtime,
    identity: Identity,
    body: bytes,
    payload: Payload | None,
    doc: dict[str, Any] | None,
) -> None:
    """403 unless every model the request asks for is on its client's list: its
    own, a form's, each line's of an uploaded batch. Checked before any upstream."""
    client = identity.client
    assert client is not None
    if payload is not None:
        asked = payload.models()
    elif doc is not None:
        asked = [doc["model"]] if "model" in doc else []
    elif body:
        raise ModelNotAllowed(
            f"client {client.name} may use only its listed models, and this request's"
            " model cannot be read"
        )
    else:
        asked = []
    for model in asked:
        if not isinstance(model, str) or not runtime.clients.allows(client, model):
            # The model is not quoted: it is the client's text.
            raise ModelNotAllowed(f"client {client.name} may not use the model it asked for")


async def _limit(
    limiter: Limiter,
    runtime: Runtime,
    plan: Plan,
    identity: Identity,
    upstream_path: str,
    body: bytes,
    doc: dict[str, Any] | None,
    ex: Exchange,
) -> UsageEventStrip | None:
    """Take the request's budgets (or refuse it); the usage-event strip a token
    limit needs on a stream that did not ask for its usage, else None."""
    config = runtime.budgets.config
    cost = 0
    if plan.tokens is not None:
        cost = tokens.reservation(doc, len(body), upstream_path, config.default_max_tokens)
    try:
        grant = await limiter.acquire(plan, identity, cost, config, ex.route or "")
    except RateLimited as exc:
        ex.ratelimit = f"refused:{exc.type}"
        raise
    except RateLimiterUnavailable:
        ex.ratelimit = "unavailable"
        raise
    refused = grant.answer.refused
    ex.grant, ex.ratelimit = grant, f"shadow:{refused}" if refused else "allowed"
    if plan.tokens is None:
        return None
    return UsageEventStrip() if tokens.wants_usage_event(doc, upstream_path) else None


async def _settle(limiter: Limiter, ex: Exchange) -> None:
    """Give back what the request took: its slot, and tokens it reserved but did not use."""
    grant = ex.grant
    if grant is None:
        return
    ex.grant = None
    used: int | None
    if ex.prompt_tokens is not None or ex.completion_tokens is not None:
        used = (ex.prompt_tokens or 0) + (ex.completion_tokens or 0)
    elif not ex.generated:
        # Refused before the upstream, or answered with an error: nothing generated.
        used = 0
    else:
        # A 2xx answer that did not say, or a stream cut short: the reservation stands.
        used = None
    await limiter.settle(grant, used)


async def read_body(request: web.Request, server: ServerConfig) -> bytes:
    """The whole request body, refusing more than max_body_size or a slow sender."""
    limit = server.max_body_size
    length = request.content_length
    if length is not None and length > limit:
        raise RequestTooLarge(f"request body exceeds {limit} bytes")
    content = request.content
    if content.is_eof():
        # Already buffered whole: taken at once, but a chunked body has no
        # Content-Length to have been checked against.
        body = content.read_nowait()
        if len(body) > limit:
            raise RequestTooLarge(f"request body exceeds {limit} bytes")
        return body
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(server.read_timeout):
            while chunk := await content.readany():
                size += len(chunk)
                if size > limit:
                    raise RequestTooLarge(f"request body exceeds {limit} bytes")
                chunks.append(chunk)
    except TimeoutError as exc:
        raise RequestTimeout("timed out reading the request body") from exc
    return b"".join(chunks)


_SSE = "text/event-stream"


def _media_type(content_type: str) -> str:
    """A Content-Type's media type as compared: lower case, without parameters."""
    return content_type.partition(";")[0].strip().lower()


def _is_json(media: str) -> bool:
    return media == "application/json" or media.endswith("+json")


async def _inspect(
    body: bytes,
    guard: Guard,
    endpoint: endpoints.Endpoint | None,
    payload: Payload | None,
    ex: Exchange,
) -> RequestResult:
    """The input stage of a guarded route: the body as its endpoint takes it.

    `read_payload` already refused a body that is not what the endpoint takes
    (JSON labelled anything, a multipart form, nothing); an endpoint no shape
    describes is refused too, unless the policy says `unknown: allow`.
    """
    if endpoint is None or payload is None:
        checked = guard.unknown_endpoint(body)
    else:
        checked = await guard.inspect_request(body, payload)
    ex.summary = checked.summary
    _enforce(checked.verdict, guard, "request")
    return checked


def _parse_unguarded(body: bytes) -> dict[str, Any] | None:
    """The JSON object of a request only the audit reads, or None."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def _record_request(ex: Exchange, doc: dict[str, Any] | None) -> None:
    if doc is not None:
        model = doc.get("model")
        ex.model = model if isinstance(model, str) else None
        ex.stream = doc.get("stream") is True


def _enforce(verdict: Verdict, guard: Guard, stage: str) -> None:
    """Turn a refusing verdict into the error the client gets; values never appear."""
    error = verdict.as_error(guard.policy.name, stage)
    if error is not None:
        raise error


def usage_of(raw: bytes) -> dict[str, Any] | None:
    """The `usage` object of a JSON answer, without parsing the whole answer.

    OpenAI-compatible APIs put `usage` last; its object then runs from the
    brace after the key to just before the answer's own closing brace. An
    answer laid out otherwise yields None rather than a wrong count.
    """
    at = raw.rfind(b'"usage"')
    if at < 0:
        return None
    start = raw.find(b"{", at)
    end = raw.rstrip().rfind(b"}")
    if start < 0 or end <= start:
        return None
    try:
        usage = orjson.loads(raw[start:end])
    except orjson.JSONDecodeError:
        return None
    return usage if isinstance(usage, dict) else None


def _stream_usage(tail: bytes) -> dict[str, Any] | None:
    """The usage object of the last SSE event that has one, in the stream's tail."""
    at = tail.rfind(b'"usage"')
    if at < 0:
        return None
    start = tail.rfind(b"data:", 0, at)
    end = tail.find(b"\n", at)
    if start < 0:
        return None
    return usage_of(tail[start + 5 : end if end >= 0 else len(tail)].strip())


def _record_usage(ex: Exchange, usage: object) -> None:
    """Token counts, named as chat and completions (prompt, completion) or
    responses (input, output) name them."""
    if isinstance(usage, dict):
        prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
        completion = usage.get("completion_tokens", usage.get("output_tokens"))
        ex.prompt_tokens = prompt if isinstance(prompt, int) else None
        ex.completion_tokens = completion if isinstance(completion, int) else None


def _summarise(out_headers: CIMultiDict[str], guard: Guard | None, ex: Exchange) -> None:
    if guard is not None and guard.policy.summary_header and ex.summary is not None:
        out_headers[SUMMARY_HEADER] = ex.summary.header()


async def _relay_plain(
    request: web.Request,
    response: Reply,
    out_headers: CIMultiDict[str],
    media: str,
    ex: Exchange,
) -> web.StreamResponse:
    """The upstream's answer as it came: status, headers, bytes."""
    length = response.content_length
    if length is not None and length <= _BUFFER_LIMIT:
        raw = await response.read()
        ex.bytes_out = len(raw)
        if (ex.audited or ex.counts_tokens) and response.ok and _is_json(media):
            _record_usage(ex, usage_of(raw))
        return web.Response(status=response.status, body=raw, headers=out_headers)
    out = web.StreamResponse(status=response.status, headers=out_headers)
    if length is not None:
        out.content_length = length
    await out.prepare(request)
    ex.prepared, ex.status = True, out.status
    async for chunk in _upstream_chunks(response, ex):
        await out.write(chunk)
        ex.bytes_out += len(chunk)
    await out.write_eof()
    return out


async def _relay_read(
    request: web.Request,
    response: Reply,
    out_headers: CIMultiDict[str],
    media: str,
    guard: Guard,
    checked: RequestResult,
    ex: Exchange,
    strip: UsageEventStrip | None,
) -> web.StreamResponse:
    """A successful (2xx) answer the guard reads, and so must be able to read.

    The gateway asks for identity, but an upstream may compress anyway: gzip
    and deflate are inflated as the bytes arrive, any other encoding cannot be
    read. The label decides between JSON and SSE; an answer labelled neither
    (text/plain, none at all) is an SSE stream if its first bytes are an SSE
    field, else read as JSON. What cannot be read is refused, or with
    on_error=allow passed unread and recorded unchecked.
    """
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in _IDENTITY and encoding not in _INFLATABLE:
        _settle_unreadable(guard, ex, "encoding", "it is in an encoding they cannot undo")
        if media == _SSE:
            unread = _upstream_chunks(response, ex)
            return await _relay_stream(
                request, response, unread, out_headers, None, None, ex, strip
            )
        return await _relay_plain(request, response, out_headers, media, ex)
    # None while the answer can be read as it came, whole or streamed.
    chunks: AsyncIterator[bytes] | None = None
    if encoding not in _IDENTITY:
        out_headers.popall("Content-Encoding", None)
        chunks = _inflated(_upstream_chunks(response, ex), ex)
    endpoint = checked.endpoint
    opaque = endpoint is not None and endpoint.opaque_answer
    if media != _SSE and not opaque and not _is_json(media):
        head, chunks = await _head(chunks or _upstream_chunks(response, ex))
        if _SSE_FIELD.match(head):
            media = _SSE
    if media == _SSE:
        chunks = chunks or _upstream_chunks(response, ex)
        return await _relay_stream(
            request, response, chunks, out_headers, guard, checked, ex, strip
        )
    # read() is several microseconds quicker than joining the chunks.
    raw = await response.read() if chunks is None else b"".join([c async for c in chunks])
    # A file's content is not parsed: the guard settles it by its endpoint.
    doc = {} if opaque else _json_object(raw)
    body = raw
    if doc is None:
        _settle_unreadable(guard, ex, "json", "it is not a JSON object")
    else:
        _record_usage(ex, doc.get("usage"))
        result = await guard.inspect_response(raw, doc, checked)
        _enforce(result.verdict, guard, "response")
        body = result.body
    _summarise(out_headers, guard, ex)
    ex.bytes_out = len(body)
    return web.Response(status=response.status, body=body, headers=out_headers)


def _json_object(raw: bytes) -> dict[str, Any] | None:
    """The answer's JSON object, or None: orjson reads strict JSON only, so NaN,
    Infinity (which Python's json takes) and invalid UTF-8 are None too."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


# An SSE line: a comment, or a field name and its colon (or line end), after
# an optional byte order mark. JSON never starts like this.
_SSE_FIELD = re.compile(rb"(?:\xef\xbb\xbf)?(?::|(?:data|event|id|retry)[:\r\n])")
_SNIFF_BYTES = 16


async def _head(chunks: AsyncIterator[bytes]) -> tuple[bytes, AsyncIterator[bytes]]:
    """The first bytes of an answer (enough to tell SSE), and its chunks from the start."""
    head = b""
    async for chunk in chunks:
        head += chunk
        if len(head) >= _SNIFF_BYTES:
            break
    return head, _after(head, chunks)


async def _after(head: bytes, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if head:
        yield head
    async for chunk in chunks:
        yield chunk


UNREADABLE = "unreadable_answer"
"""What `Summary.unchecked` names for an answer on_error=allow passed unread."""


def _settle_unreadable(guard: Guard, ex: Exchange, reason: str, why: str) -> None:
    """An answer the guard cannot read: refused (raises), or with on_error=allow
    passed on unread, counted and recorded in the audit as unchecked."""
    if guard.policy.on_error == "block":
        raise _unreadable(ex, reason, why)
    child(UNREADABLE_ANSWERS, ex.route or "", reason, "passed").inc()
    if ex.summary is not None and UNREADABLE not in ex.summary.unchecked:
        ex.summary.unchecked.append(UNREADABLE)


def _unreadable(ex: Exchange, reason: str, why: str) -> UnreadableUpstreamAnswer:
    """The refusal of an answer the guard cannot read, counted; `reason` is a label."""
    child(UNREADABLE_ANSWERS, ex.route or "", reason, "refused").inc()
    message = f"the guardrails could not read the answer of upstream {ex.upstream}: {why}"
    return UnreadableUpstreamAnswer(reason, message, attempts=ex.attempts)


_IDENTITY = ("", "identity")
_INFLATABLE = ("gzip", "x-gzip", "deflate")
# An answer inflating to more than this is refused rather than inspected.
_INFLATE_LIMIT = 64 * 1024 * 1024


async def _inflated(chunks: AsyncIterator[bytes], ex: Exchange) -> AsyncIterator[bytes]:
    """gzip or deflate undone as the chunks arrive, in pieces of at most
    _BUFFER_LIMIT (a small chunk can inflate to gigabytes), _INFLATE_LIMIT in all.

    Bytes that do not inflate, stop short or run past the compressed data's
    end are refused whatever on_error says: there is no whole answer to pass.
    """
    # 32 + MAX_WBITS: take a gzip or a zlib header, whichever the answer has.
    inflater = zlib.decompressobj(32 + zlib.MAX_WBITS)
    total = 0
    async for chunk in chunks:
        data = chunk
        while True:
            try:
                piece = inflater.decompress(data, _BUFFER_LIMIT)
            except zlib.error as exc:
                raise _unreadable(ex, "encoding", "its compressed bytes are corrupt") from exc
            total += len(piece)
            if total > _INFLATE_LIMIT:
                raise _unreadable(ex, "size", f"it inflates past {_INFLATE_LIMIT} bytes")
            if piece:
                yield piece
            data = inflater.unconsumed_tail
            # A full piece may leave output pending with no input left.
            if not data and len(piece) < _BUFFER_LIMIT:
                break
    if not inflater.eof or inflater.unused_data:
        raise _unreadable(ex, "encoding", "its compressed bytes are cut short or run on")


async def _relay_stream(
    request: web.Request,
    response: Reply,
    chunks: AsyncIterator[bytes],
    out_headers: CIMultiDict[str],
    guard: Guard | None,
    checked: RequestResult | None,
    ex: Exchange,
    strip: UsageEventStrip | None,
) -> web.StreamResponse:
    """An SSE answer, event by event as the upstream produces them.

    `strip` takes out the usage event the gateway asked for on the client's
    behalf (to settle a token reservation) and keeps its usage.
    """
    ex.stream = True
    stream_guard = guard.stream(checked) if guard is not None and checked is not None else None
    _summarise(out_headers, guard, ex)
    out = web.StreamResponse(status=response.status, headers=out_headers)
    await out.prepare(request)
    ex.prepared, ex.status = True, out.status
    # The last two chunks sent, for the usage the final event carries.
    previous = last = b""
    try:
        async for chunk in chunks:
            data = await stream_guard.feed(chunk) if stream_guard is not None else chunk
            if strip is not None:
                data = strip.feed(data)
            if data:
                await out.write(data)
                ex.bytes_out += len(data)
                previous, last = last, data
            if stream_guard is not None and not stream_guard.verdict.allowed:
                ex.error = (
                    GuardrailUnavailable.code
                    if stream_guard.verdict.unavailable
                    else GuardrailViolation.code
                )
                break
        tail = await stream_guard.finish() if stream_guard is not None else b""
        if strip is not None:
            tail = strip.feed(tail) + strip.finish()
        if tail:
            await out.write(tail)
            ex.bytes_out += len(tail)
            previous, last = last, tail
        await out.write_eof()
        if strip is not None:
            _record_usage(ex, strip.usage)
        elif ex.audited or ex.counts_tokens:
            _record_usage(ex, _stream_usage(previous + last))
    except UpstreamError as exc:
        # Headers are out: the stream ends with the error as its last event.
        ex.error = exc.code
        await out.write(exc.sse_event())
        await out.write_eof()
    except ConnectionResetError:
        # The client went away mid-stream; the caller closes the upstream.
        ex.status = CLIENT_CLOSED
        raise
    return out


async def _upstream_chunks(response: Reply, ex: Exchange) -> AsyncIterator[bytes]:
    """The upstream body as it arrives; breaking off becomes an UpstreamError."""
    try:
        async for chunk in response.content.iter_any():
            yield chunk
    except TimeoutError as exc:
        raise UpstreamTimeout(f"upstream {ex.upstream} stalled mid-answer") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamUnavailable(f"upstream {ex.upstream} broke off mid-answer") from exc
