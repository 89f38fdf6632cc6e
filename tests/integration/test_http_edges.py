"""The gateway's HTTP edges: which methods, targets and headers cross it."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from multidict import CIMultiDictProxy

from gatewayd.config.schema import Config
from tests.conftest import FakeUpstream
from tests.harness import running_gateway, write_config

KEY = "sk-upstream-secret"
CHAT = {"model": "gpt-fake", "messages": [{"role": "user", "content": "hello"}]}


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


def _audit(tmp_path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (tmp_path / "audit.jsonl").read_bytes().splitlines()]


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
