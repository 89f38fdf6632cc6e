"""A fake OpenAI API on loopback: chat (plain and SSE), completions, embeddings, models.

The assistant answers by echoing the last user message ("You said: ..."), so a
test can see what the upstream received (placeholders, after redaction) and
what the client got back (values, after restore). Tests steer it through
`FakeState` on the app: fail the next requests, stall, slow the stream.

Run standalone for the demo: python -m tests.fakes.openai_upstream --port 9100
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import time
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web import ContentCoding
from multidict import CIMultiDict


@dataclass
class Received:
    method: str
    path: str
    headers: CIMultiDict[str]
    body: bytes


@dataclass
class FakeState:
    received: list[Received] = field(default_factory=list)
    # Statuses to answer the next requests with, one each, before behaving.
    fail_next: list[int] = field(default_factory=list)
    # Seconds to wait before answering headers.
    stall: float = 0.0
    # Characters per SSE event and seconds between events.
    chunk_chars: int = 4
    event_delay: float = 0.0
    # Set when a stream's client went away before the end.
    stream_aborted: asyncio.Event = field(default_factory=asyncio.Event)
    # A fixed answer instead of the echo (for output filter tests).
    answer: str | None = None
    # Print each request body to stdout (the demo shows what arrived).
    log_bodies: bool = False
    # Cut the connection after this many content events or body chunks.
    break_after: int | None = None
    # Answer whole chats in this Content-Encoding whatever the client accepts
    # ("gzip" compresses; any other name labels the plain bytes).
    answer_encoding: str | None = None
    # Chat answers, whole and streamed, labelled with this Content-Type.
    content_type: str | None = None
    # A whole chat answer of exactly these bytes (NaN, bad UTF-8, not JSON).
    answer_bytes: bytes | None = None
    # Compress chat streams in this encoding ("gzip", "deflate") whatever
    # the client accepts.
    stream_encoding: str | None = None
    # Headers added to every answer (cookies, credentials of its own).
    answer_headers: dict[str, str] = field(default_factory=dict)


STATE = web.AppKey("state", FakeState)


def _last_user_text(doc: dict[str, Any]) -> str:
    for message in reversed(doc.get("messages") or []):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if p.get("type") == "text")
    prompt = doc.get("prompt")
    return prompt if isinstance(prompt, str) else ""


def _answer(state: FakeState, doc: dict[str, Any]) -> str:
    return state.answer if state.answer is not None else f"You said: {_last_user_text(doc)}"


def _usage(doc: dict[str, Any], answer: str) -> dict[str, int]:
    prompt_tokens = len(orjson.dumps(doc.get("messages") or doc.get("prompt") or "")) // 4
    completion_tokens = max(1, len(answer) // 4)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


@web.middleware
async def _record(request: web.Request, handler: Any) -> web.StreamResponse:
    state = request.app[STATE]
    body = await request.read()
    state.received.append(
        Received(request.method, request.path_qs, CIMultiDict(request.headers), body)
    )
    if state.log_bodies:
        print(f"{request.method} {request.path_qs} {body.decode(errors='replace')}", flush=True)
    if state.stall:
        await asyncio.sleep(state.stall)
    if state.fail_next:
        status = state.fail_next.pop(0)
        error = {"error": {"message": f"fake failure {status}", "type": "server_error"}}
        return web.json_response(error, status=status)
    response: web.StreamResponse = await handler(request)
    return response


async def chat(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    doc = orjson.loads(await request.read())
    answer = _answer(state, doc)
    created = int(time.time())
    base = {"id": "chatcmpl-fake", "created": created, "model": doc.get("model", "fake")}
    if not doc.get("stream"):
        whole = web.json_response(
            {
                **base,
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer},
                        "finish_reason": "stop",
                    }
                ],
                "usage": _usage(doc, answer),
            }
        )
        if state.answer_encoding is not None:
            assert isinstance(whole.body, bytes)
            encoded = gzip.compress(whole.body) if state.answer_encoding == "gzip" else whole.body
            whole.body = encoded
            whole.headers["Content-Encoding"] = state.answer_encoding
        if state.answer_bytes is not None:
            whole.body = state.answer_bytes
        if state.content_type is not None:
            whole.headers["Content-Type"] = state.content_type
        return whole
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    if state.content_type is not None:
        response.headers["Content-Type"] = state.content_type
    if state.stream_encoding is not None:
        response.enable_compression(force=ContentCoding(state.stream_encoding))
    await response.prepare(request)

    # As OpenAI does: usage only when asked for, as `null` on every chunk and
    # then in one last chunk with no choices.
    options = doc.get("stream_options")
    with_usage = isinstance(options, dict) and options.get("include_usage") is True
    nothing: dict[str, Any] = {"usage": None} if with_usage else {}

    def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk = {
            **base,
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **nothing,
        }
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    try:
        await response.write(event({"role": "assistant", "content": ""}))
        step = max(1, state.chunk_chars)
        for n, i in enumerate(range(0, len(answer), step)):
            if n == state.break_after:
                _cut(request)
                return response
            if state.event_delay:
                await asyncio.sleep(state.event_delay)
            await response.write(event({"content": answer[i : i + step]}))
        await response.write(event({}, "stop"))
        if with_usage:
            usage = {**base, "object": "chat.completion.chunk", "choices": []}
            usage["usage"] = _usage(doc, answer)
            await response.write(b"data: " + orjson.dumps(usage) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
    except (ConnectionResetError, asyncio.CancelledError):
        state.stream_aborted.set()
        raise
    return response


async def echo(request: web.Request) -> web.Response:
    """Any method: the request line and headers as received, as an echoing server would."""
    headers = dict(request.headers.items())
    return web.json_response({"method": request.method, "headers": headers})


async def _add_answer_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.extend(request.app[STATE].answer_headers)


def _cut(request: web.Request) -> None:
    """Drop the connection mid-answer, as a crashing upstream would."""
    assert request.transport is not None
    request.transport.abort()


async def file_content(request: web.Request) -> web.StreamResponse:
    """A chunked binary body of 8 chunks of 1 KiB (not JSON, not SSE)."""
    state = request.app[STATE]
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    await response.prepare(request)
    for n in range(8):
        if n == state.break_after:
            _cut(request)
            return response
        await response.write(bytes([n]) * 1024)
        await asyncio.sleep(0.01)
    await response.write_eof()
    return response


async def completions(request: web.Request) -> web.Response:
    state = request.app[STATE]
    doc = orjson.loads(await request.read())
    answer = _answer(state, doc)
    return web.json_response(
        {
            "id": "cmpl-fake",
            "object": "text_completion",
            "created": int(time.time()),
            "model": doc.get("model", "fake"),
            "choices": [{"index": 0, "text": answer, "finish_reason": "stop", "logprobs": None}],
            "usage": _usage(doc, answer),
        }
    )


async def embeddings(request: web.Request) -> web.Response:
    doc = orjson.loads(await request.read())
    inputs = doc.get("input")
    items = inputs if isinstance(inputs, list) else [inputs]
    data = [
        {"object": "embedding", "index": i, "embedding": [float(len(str(t))), 0.5, -0.25]}
        for i, t in enumerate(items)
    ]
    return web.json_response(
        {
            "object": "list",
            "data": data,
            "model": doc.get("model", "fake"),
            "usage": {"prompt_tokens": len(items), "total_tokens": len(items)},
        }
    )


def _responses_text(doc: dict[str, Any]) -> str:
    """The last text of a Responses input: a string, or the last item's content or output."""
    given = doc.get("input")
    if isinstance(given, str):
        return given
    for item in reversed(given or []):
        for key in ("content", "output"):
            value = item.get(key)
            if isinstance(value, str):
                return value
            if isinstance(value, list) and value and isinstance(value[-1].get("text"), str):
                return str(value[-1]["text"])
    return ""


async def responses(request: web.Request) -> web.StreamResponse:
    """The Responses API: a message echoing the input, whole or as its event stream."""
    state = request.app[STATE]
    doc = orjson.loads(await request.read())
    text = state.answer if state.answer is not None else f"You said: {_responses_text(doc)}"
    part = {"type": "output_text", "text": text, "annotations": []}
    item = {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed"}
    final = {
        "id": "resp_fake",
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "model": doc.get("model", "fake"),
        "instructions": doc.get("instructions"),
        "output": [{**item, "content": [part]}],
        "usage": {"input_tokens": 3, "output_tokens": len(text.split()), "total_tokens": 9},
    }
    if not doc.get("stream"):
        return web.json_response(final)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    at = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    started = {**final, "status": "in_progress", "output": []}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": started},
        {"type": "response.output_item.added", "output_index": 0, "item": {**item, "content": []}},
        {"type": "response.content_part.added", **at, "part": {**part, "text": ""}},
    ]
    step = max(1, state.chunk_chars)
    events += [
        {"type": "response.output_text.delta", **at, "delta": text[i : i + step], "logprobs": []}
        for i in range(0, len(text), step)
    ]
    events += [
        {"type": "response.output_text.done", **at, "text": text, "logprobs": []},
        {"type": "response.content_part.done", **at, "part": part},
        {"type": "response.output_item.done", "output_index": 0, "item": final["output"][0]},
        {"type": "response.completed", "response": final},
    ]
    for n, event in enumerate(events):
        event["sequence_number"] = n
        await response.write(
            b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
        )
    await response.write_eof()
    return response


async def _form(request: web.Request) -> dict[str, tuple[str | None, bytes]]:
    """A multipart form's parts by name: (filename, bytes). The body was read already
    (by `_record`), so it is parsed from the bytes rather than the stream."""
    head = f"Content-Type: {request.headers['Content-Type']}\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + await request.read())
    parts: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = str(part.get_param("name", header="content-disposition"))
        data = part.get_payload(decode=True)
        parts[name] = (part.get_filename(), data if isinstance(data, bytes) else b"")
    return parts


async def transcriptions(request: web.Request) -> web.Response:
    """Audio transcription: echoes the form's prompt as the text heard."""
    state = request.app[STATE]
    form = await _form(request)
    prompt = form.get("prompt", (None, b""))[1].decode()
    return web.json_response({"text": state.answer or f"heard: {prompt}"})


async def files(request: web.Request) -> web.Response:
    """A file upload: the file object, as OpenAI answers it."""
    form = await _form(request)
    filename, data = form["file"]
    return web.json_response(
        {
            "id": "file-fake",
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": form["purpose"][1].decode(),
        }
    )


async def models(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "object": "list",
            "data": [
                {"id": "gpt-fake", "object": "model", "created": 0, "owned_by": "gatewayd-tests"}
            ],
        }
    )


def make_app(state: FakeState | None = None) -> web.Application:
    """The fake upstream; routes live under /v1 like OpenAI's."""
    app = web.Application(middlewares=[_record])
    app[STATE] = state or FakeState()
    app.on_response_prepare.append(_add_answer_headers)
    app.router.add_route("*", "/v1/echo", echo)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/responses", responses)
    app.router.add_post("/v1/audio/transcriptions", transcriptions)
    app.router.add_post("/v1/files", files)
    app.router.add_get("/v1/files/{file_id}/content", file_content)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--log-bodies", action="store_true", help="print each request body")
    args = parser.parse_args()
    app = make_app(FakeState(log_bodies=args.log_bodies))
    web.run_app(app, host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
