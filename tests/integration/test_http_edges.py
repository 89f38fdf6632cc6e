"""The gateway's HTTP edges: which methods, targets and headers cross it, and which
answers a guarded route refuses because its guardrails cannot read them."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from multidict import CIMultiDictProxy

from gatewayd import proxy
from gatewayd.config.schema import Config
from gatewayd.observability.metrics import REGISTRY
from tests.conftest import FakeUpstream
from tests.harness import running_gateway, write_config

KEY = "sk-upstream-secret"
CHAT = {"model": "gpt-fake", "messages": [{"role": "user", "content": "hello"}]}
# What the fake model says: a value the output filter must never let through.
LEAK = "bob@example.org"
ANSWER = f"write to {LEAK}"


def _config(
    tmp_path: Path, upstream_url: str, *, on_error: str = "block", upstream_extra: str = ""
) -> Config:
    """/v1/ guarded by a redacting pii policy (input and output), /open/ unguarded."""
    return write_config(
        tmp_path,
        f"""
        server:
          listen: 127.0.0.1:0
        logging:
          level: warning
        upstreams:
          fake:
            url: {upstream_url}
            api_key: {KEY}
            read_timeout: 2s
            retry:
              attempts: 1
            {upstream_extra}
        filters:
          pii:
            kind: pii
        policies:
          guard:
            mode: redact
            input: [pii]
            output: [pii]
            restore: true
            on_error: {on_error}
        routes:
          guarded:
            prefix: /v1/
            upstream: fake
            policy: guard
          open:
            prefix: /open/
            upstream: fake
            strip_prefix: true
        audit:
          sink: jsonl
          path: {tmp_path}/audit.jsonl
          flush_interval: 50ms
        """,
    )


async def _ask(
    config: Config,
    path: str = "/v1/chat/completions",
    *,
    method: str = "POST",
    json: Any = CHAT,
    headers: dict[str, str] | None = None,
) -> tuple[int, CIMultiDictProxy[str], bytes]:
    """One request through a gateway on `config`: status, headers and body as they came."""
    async with (
        running_gateway(config) as gw,
        aiohttp.ClientSession(auto_decompress=False) as client,
    ):
        sent = json if method == "POST" else None
        resp = await client.request(method, gw.url + path, json=sent, headers=headers)
        return resp.status, resp.headers, await resp.read()


STREAM = {**CHAT, "stream": True}
CHUNK = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "gpt-fake"}


def _audit(tmp_path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (tmp_path / "audit.jsonl").read_bytes().splitlines()]


def _refusals(reason: str, outcome: str) -> float:
    labels = {"route": "guarded", "reason": reason, "outcome": outcome}
    return REGISTRY.get_sample_value("gatewayd_unreadable_answers_total", labels) or 0.0


def _whole(content: str, logprobs: str = "null") -> bytes:
    """A chat completion as an upstream would write it, `logprobs` spliced in as is."""
    message = orjson.dumps({"role": "assistant", "content": content}).decode()
    return (
        '{"id":"chatcmpl-1","object":"chat.completion","created":0,"model":"gpt-fake",'
        f'"choices":[{{"index":0,"message":{message},"logprobs":{logprobs},'
        '"finish_reason":"stop"}]}'
    ).encode()


def _refused(body: bytes) -> dict[str, Any]:
    """The error of an answer refused as unreadable; none of the answer is in it."""
    assert LEAK.encode() not in body
    error: dict[str, Any] = orjson.loads(body)["error"]
    assert error["code"] == "upstream_unavailable"
    assert "guardrails could not read" in error["message"]
    return error


# --- answers the guard must read -------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(_whole(ANSWER, "NaN"), id="NaN"),
        pytest.param(_whole(ANSWER, "-Infinity"), id="-Infinity"),
        pytest.param(_whole(ANSWER + " BAD").replace(b"BAD", b"\xff"), id="bad-utf8"),
        pytest.param(b"[" + _whole(ANSWER) + b"]", id="not-an-object"),
        pytest.param(ANSWER.encode(), id="not-json"),
    ],
)
async def test_answer_orjson_rejects_is_refused(
    tmp_path: Path, fake_upstream: FakeUpstream, answer: bytes
) -> None:
    """A JSON answer the guard cannot parse (Python's json would) is a 502, never relayed."""
    fake_upstream.state.answer_bytes = answer
    before = _refusals("json", "refused")
    status, headers, body = await _ask(_config(tmp_path, fake_upstream.url))
    assert status == 502
    assert headers["x-should-retry"] == "false"
    _refused(body)
    assert _refusals("json", "refused") == before + 1
    (event,) = _audit(tmp_path)
    assert (event["status"], event["error"], event["attempts"]) == (502, "upstream_unavailable", 1)


async def test_unreadable_answer_passes_unchecked_with_on_error_allow(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    """With on_error allow an unreadable answer reaches the client as sent, audited unchecked."""
    answer = _whole(ANSWER, "NaN")
    fake_upstream.state.answer_bytes = answer
    before = _refusals("json", "passed")
    status, _, body = await _ask(_config(tmp_path, fake_upstream.url, on_error="allow"))
    assert (status, body) == (200, answer)
    assert _refusals("json", "passed") == before + 1
    (event,) = _audit(tmp_path)
    assert event["action"] == "unchecked"
    assert event["findings"]["unchecked"] == ["unreadable_answer"]


@pytest.mark.parametrize(
    "content_type",
    [
        "Application/JSON",
        "application/json ; charset=UTF-8",
        "application/vnd.api+json",
        "text/plain",
        "application/octet-stream",
    ],
)
async def test_json_under_any_label_is_read_and_guarded(
    tmp_path: Path, fake_upstream: FakeUpstream, content_type: str
) -> None:
    """A JSON answer in capitals, with parameters or labelled as text is filtered, not relayed."""
    fake_upstream.state.answer = ANSWER
    fake_upstream.state.content_type = content_type
    status, _, body = await _ask(_config(tmp_path, fake_upstream.url))
    assert status == 200
    assert orjson.loads(body)["choices"][0]["message"]["content"] == "write to <EMAIL_ADDRESS_1>"


@asynccontextmanager
async def _raw_upstream(answer: bytes) -> AsyncIterator[str]:
    """An upstream that answers every request with exactly `answer`: status line, headers, body."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?i)\r\ncontent-length: *([0-9]+)", head)
        await reader.readexactly(int(length.group(1)) if length else 0)
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}"


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        pytest.param(_whole(ANSWER), 200, id="json"),
        pytest.param(
            b"data: "
            + orjson.dumps({**CHUNK, "choices": [{"index": 0, "delta": {"content": ANSWER}}]})
            + b"\n\ndata: [DONE]\n\n",
            200,
            id="sse",
        ),
        pytest.param(ANSWER.encode(), 502, id="text"),
        pytest.param(b"", 502, id="empty"),
    ],
)
async def test_unlabelled_answer_is_sniffed_or_refused(
    tmp_path: Path, answer: bytes, status: int
) -> None:
    """With no Content-Type, JSON is read as JSON and SSE as a stream; anything else is refused."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(answer)
    async with _raw_upstream(head + answer) as url:
        got, _, body = await _ask(_config(tmp_path, url))
    assert got == status
    if status == 200:
        assert LEAK.encode() not in body
        assert b"<EMAIL_ADDRESS_1>" in body
    else:
        _refused(body)


@pytest.mark.parametrize(
    ("content_type", "encoding"),
    [
        ("Text/Event-Stream; charset=utf-8", None),
        ("text/plain", None),
        (None, "gzip"),
        (None, "deflate"),
    ],
)
async def test_stream_labelled_otherwise_or_compressed_is_guarded(
    tmp_path: Path, fake_upstream: FakeUpstream, content_type: str | None, encoding: str | None
) -> None:
    """A stream labelled in capitals, with parameters or as text, or compressed anyway (inflated
    as it comes) is filtered event by event, not relayed unread."""
    fake_upstream.state.answer = ANSWER
    fake_upstream.state.content_type = content_type
    fake_upstream.state.stream_encoding = encoding
    status, headers, body = await _ask(_config(tmp_path, fake_upstream.url), json=STREAM)
    assert status == 200
    assert "Content-Encoding" not in headers
    assert LEAK.encode() not in body
    assert b"<EMAIL_ADDRESS_1>" in body
    assert body.endswith(b"data: [DONE]\n\n")


async def test_compressed_stream_inflating_past_the_limit_ends_with_an_error(
    tmp_path: Path, fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compressed stream inflating past the bound ends with an error event, unread beyond it."""
    monkeypatch.setattr(proxy, "_INFLATE_LIMIT", 256)
    fake_upstream.state.answer = "x" * 4096 + ANSWER
    fake_upstream.state.stream_encoding = "gzip"
    before = _refusals("size", "refused")
    _, _, body = await _ask(_config(tmp_path, fake_upstream.url), json=STREAM)
    last = body.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    _refused(last.removeprefix(b"data: "))
    assert _refusals("size", "refused") == before + 1


async def test_stream_in_an_unreadable_encoding_is_refused(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    """A stream in an encoding the guard cannot inflate is refused before anything is sent."""
    fake_upstream.state.answer = ANSWER
    fake_upstream.state.answer_headers = {"Content-Encoding": "br"}
    status, _, body = await _ask(_config(tmp_path, fake_upstream.url), json=STREAM)
    assert status == 502
    _refused(body)


async def test_error_answers_are_relayed_as_they_came(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    """An upstream error (no model output) keeps its status and body."""
    fake_upstream.state.fail_next = [429]
    status, _, body = await _ask(_config(tmp_path, fake_upstream.url))
    assert status == 429
    assert orjson.loads(body)["error"]["message"] == "fake failure 429"


# --- methods and request targets -------------------------------------------------


@pytest.mark.parametrize("method", ["TRACE", "PUT", "PATCH", "OPTIONS", "HEAD"])
@pytest.mark.parametrize("path", ["/v1/models", "/open/v1/echo"])
async def test_methods_the_api_does_not_use_are_405(
    tmp_path: Path, fake_upstream: FakeUpstream, method: str, path: str
) -> None:
    """TRACE and the other unused methods get 405 on every route, never the upstream or its key."""
    status, headers, body = await _ask(_config(tmp_path, fake_upstream.url), path, method=method)
    assert status == 405
    assert headers["Allow"] == "GET, POST, DELETE"
    assert KEY.encode() not in body
    if method != "HEAD":
        assert orjson.loads(body)["error"]["code"] == "method_not_allowed"
    assert fake_upstream.state.received == []


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
async def test_the_api_methods_are_forwarded(
    tmp_path: Path, fake_upstream: FakeUpstream, method: str
) -> None:
    """GET, POST and DELETE reach the upstream."""
    config = _config(tmp_path, fake_upstream.url)
    status, _, body = await _ask(config, "/open/v1/echo", method=method)
    assert (status, orjson.loads(body)["method"]) == (200, method)


def _catch_all(tmp_path: Path, upstream_url: str) -> Config:
    """An unguarded route on "/", so any path the gateway does not answer itself is forwarded."""
    return write_config(
        tmp_path,
        f"""
        server: {{listen: "127.0.0.1:0"}}
        logging: {{level: warning}}
        upstreams: {{fake: {{url: "{upstream_url}", api_key: {KEY}}}}}
        routes: {{all: {{prefix: /, upstream: fake}}}}
        audit: {{sink: jsonl, path: "{tmp_path}/audit.jsonl", flush_interval: 50ms}}
        """,
    )


@pytest.mark.parametrize("path", ["/health", "/health/ready", "/health/detailed", "/metrics"])
async def test_reserved_paths_keep_their_methods(
    tmp_path: Path, fake_upstream: FakeUpstream, path: str
) -> None:
    """The gateway's own paths answer GET and HEAD; other methods get 405, never the upstream."""
    config = _catch_all(tmp_path, fake_upstream.url)
    assert (await _ask(config, path, method="HEAD"))[0] in (200, 503)
    status, headers, body = await _ask(config, path)
    assert (status, headers["Allow"]) == (405, "GET, HEAD")
    assert orjson.loads(body)["error"]["code"] == "method_not_allowed"
    assert fake_upstream.state.received == []


async def _raw_exchange(gw_url: str, sent: bytes) -> bytes:
    """Send `sent` on a new connection; what comes back until the gateway closes it."""
    host, port = gw_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(sent)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(65536), timeout=5)
    finally:
        writer.close()


async def test_absolute_form_target_is_refused(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    """`POST http://host/path` (a forward-proxy request) is a 400, neither routed nor forwarded."""
    async with running_gateway(_catch_all(tmp_path, fake_upstream.url)) as gw:
        reply = await _raw_exchange(
            gw.url,
            b"POST http://api.openai.com/v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
        )
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert orjson.loads(body)["error"]["code"] == "invalid_request_target"
    assert fake_upstream.state.received == []
    (event,) = _audit(tmp_path)
    assert (event["route"], event["status"]) == (None, 400)
    assert event["error"] == "invalid_request_target"


@pytest.mark.parametrize(
    "request_line",
    [b"CONNECT api.openai.com:443 HTTP/1.1", b"OPTIONS * HTTP/1.1"],
    ids=["connect", "asterisk"],
)
async def test_authority_and_asterisk_forms_never_reach_the_upstream(
    tmp_path: Path, fake_upstream: FakeUpstream, request_line: bytes
) -> None:
    """CONNECT and `OPTIONS *` are answered by the gateway and never forwarded."""
    async with running_gateway(_catch_all(tmp_path, fake_upstream.url)) as gw:
        sent = request_line + b"\r\nHost: x\r\nConnection: close\r\n\r\n"
        reply = await _raw_exchange(gw.url, sent)
    assert re.match(rb"HTTP/1\.1 4[0-9][0-9] ", reply)
    assert fake_upstream.state.received == []


# --- credential and billing headers ----------------------------------------------

CLIENT_CREDENTIALS = {
    "api-key": "azure-client-key",
    "X-Api-Key": "anthropic-client-key",
    "x-goog-api-key": "gemini-client-key",
    "OpenAI-Organization": "org-client",
    "OpenAI-Project": "proj-client",
    "Cookie": "session=client",
    "Ocp-Apim-Subscription-Key": "apim-client-key",
}


@pytest.mark.parametrize("path", ["/v1/models", "/open/v1/echo"])
async def test_client_credential_and_billing_headers_are_not_forwarded(
    tmp_path: Path, fake_upstream: FakeUpstream, path: str
) -> None:
    """A client cannot send its own keys, nor choose the org or project the gateway's key bills."""
    config = _config(tmp_path, fake_upstream.url)
    status, _, _ = await _ask(config, path, method="GET", headers=CLIENT_CREDENTIALS)
    assert status == 200
    received = fake_upstream.state.received[-1].headers
    for name in CLIENT_CREDENTIALS:
        assert name not in received, name
    assert received["Authorization"] == f"Bearer {KEY}"


async def test_upstream_headers_and_drop_headers_apply(
    tmp_path: Path, fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Configured headers replace the client's, and configured names are dropped."""
    monkeypatch.setenv("GATEWAY_ORG", "org-gateway")
    extra = """headers:
              OpenAI-Organization: ${GATEWAY_ORG}
              X-Tenant: gatewayd
            drop_headers: [X-Debug-Route, x-client-hint]"""
    sent = {
        "OpenAI-Organization": "org-client",
        "X-Tenant": "client",
        "X-Debug-Route": "internal",
        "X-Client-Hint": "1",
        "X-Kept": "yes",
    }
    config = _config(tmp_path, fake_upstream.url, upstream_extra=extra)
    status, _, _ = await _ask(config, "/open/v1/echo", method="GET", headers=sent)
    assert status == 200
    received = fake_upstream.state.received[-1].headers
    assert received.getall("OpenAI-Organization") == ["org-gateway"]
    assert received.getall("X-Tenant") == ["gatewayd"]
    assert "X-Debug-Route" not in received
    assert "X-Client-Hint" not in received
    assert received["X-Kept"] == "yes"


@pytest.mark.parametrize("path", ["/open/v1/models", "/v1/chat/completions"])
async def test_upstream_credentials_and_cookies_never_reach_the_client(
    tmp_path: Path, fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """Set-Cookie, the upstream's credential headers and the org its key bills stay here."""
    monkeypatch.setenv("AZURE_KEY", "azure-secret")
    leaked = {
        "Set-Cookie": "__cf_bm=upstream",
        "Authorization": f"Bearer {KEY}",
        "api-key": "azure-secret",
        "OpenAI-Organization": "org-gateway",
        "OpenAI-Project": "proj-gateway",
    }
    fake_upstream.state.answer_headers = {**leaked, "x-ratelimit-remaining-requests": "99"}
    config = _config(
        tmp_path, fake_upstream.url, upstream_extra="headers: {api-key: '${AZURE_KEY}'}"
    )
    method = "GET" if path.endswith("models") else "POST"
    status, headers, _ = await _ask(config, path, method=method)
    assert status == 200
    for name in leaked:
        assert name not in headers, name
    assert headers["x-ratelimit-remaining-requests"] == "99"
