"""The proxy against a real fake upstream on loopback: routing, headers, limits, errors."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.conftest import FakeUpstream, free_port
from tests.harness import running_gateway, write_config

CHAT = {"model": "gpt-fake", "messages": [{"role": "user", "content": "hello there"}]}


def _config(tmp_path: Path, upstream_url: str, extra: str = "", route_extra: str = "") -> str:
    return f"""
        server:
          listen: 127.0.0.1:0
          max_body_size: 4KiB
          read_timeout: 1s
          shutdown_timeout: 2s
        logging:
          level: warning
        upstreams:
          fake:
            url: {upstream_url}
            api_key: sk-upstream-secret
            connect_timeout: 1s
            read_timeout: 2s
            retry:
              attempts: 1
        routes:
          v1:
            prefix: /v1/
            upstream: fake
            {route_extra}
        audit:
          sink: jsonl
          path: {tmp_path}/audit.jsonl
          flush_interval: 50ms
        {extra}
    """


def _guarded_config(tmp_path: Path, upstream_url: str, *, output: str) -> str:
    """_config with a redacting, restoring pii policy on the route."""
    extra = f"""
        filters:
          pii:
            kind: pii
        policies:
          guard:
            mode: redact
            input: [pii]
            output: {output}
            restore: true
    """
    return _config(tmp_path, upstream_url, extra=extra, route_extra="policy: guard")


async def test_chat_is_relayed_with_the_upstream_key(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    """A chat request reaches the upstream with its key, never the client's, and returns as is."""
    config = write_config(tmp_path, _config(tmp_path, fake_upstream.url))
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        resp = await client.post(
            f"{gw.url}/v1/chat/completions",
            json=CHAT,
            headers={"Authorization": "Bearer sk-client-key", "X-Request-Id": "req-42"},
        )
        assert resp.status == 200
        assert resp.headers["X-Request-Id"] == "req-42"
        body = await resp.json()
        assert body["choices"][0]["message"]["content"] == "You said: hello there"
    received = fake_upstream.state.received[-1]
    assert received.path == "/v1/chat/completions"
    assert received.headers["Authorization"] == "Bearer sk-upstream-secret"
    assert received.headers["Host"] == fake_upstream.url.removeprefix("http://")
    assert received.headers["X-Request-Id"] == "req-42"
    assert orjson.loads(received.body) == CHAT


async def test_unguarded_body_is_forwarded_byte_for_byte(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    """Without a policy the upstream gets exactly the bytes the client sent."""
    config = write_config(tmp_path, _config(tmp_path, fake_upstream.url))
    raw = b'{"model":"gpt-fake",   "messages":[{"role":"user","content":"x"}]}'
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        resp = await client.post(
            f"{gw.url}/v1/chat/completions",
            data=raw,
            headers={"Content-Type": "application/json"},
        )
        assert resp.status == 200
    assert fake_upstream.state.received[-1].body == raw


async def test_hop_by_hop_headers_are_not_forwarded(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    """Connection-named and hop-by-hop headers stop at the gateway."""
    config = write_config(tmp_path, _config(tmp_path, fake_upstream.url))
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        resp = await client.get(
            f"{gw.url}/v1/models",
            headers={
                "Connection": "keep-alive, X-Hop",
                "X-Hop": "secret",
                "Proxy-Authorization": "Basic abc",
                "X-End-To-End": "kept",
            },
        )
        assert resp.status == 200
    headers = fake_upstream.state.received[-1].headers
    assert "X-Hop" not in headers
    assert "Proxy-Authorization" not in headers
    assert headers["X-End-To-End"] == "kept"


async def test_paths_are_normalised_and_routed(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    """Duplicate slashes and dot segments are folded before routing; encoded slashes are refused."""
    config = write_config(tmp_path, _config(tmp_path, fake_upstream.url))
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        resp = await client.get(f"{gw.url}//v1/./x/../models")
        assert resp.status == 200
        assert fake_upstream.state.received[-1].path == "/v1/models"
        resp = await client.get(f"{gw.url}/v1/models%2F..%2Fadmin")
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "invalid_path"


async def test_strip_prefix(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    """With strip_prefix the route's prefix is replaced by the upstream URL's path."""
    text = _config(tmp_path, fake_upstream.url + "/v1", route_extra="strip_prefix: true")
    text = text.replace("prefix: /v1/", "prefix: /openai/")
    config = write_config(tmp_path, text)
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        resp = await client.get(f"{gw.url}/openai/models?limit=2")
        assert resp.status == 200
    assert fake_upstream.state.received[-1].path == "/v1/models?limit=2"


async def test_unknown_path_is_an_openai_shaped_404(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    """No route means 404 in the error shape SDKs parse."""
    config = write_config(tmp_path, _config(tmp_path, fake_upstream.url))
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        resp = await client.get(f"{gw.url}/v2/models")
        assert resp.status == 404
        error = (await resp.json())["error"]
        assert error["code"] == "not_found"
        assert set(error) == {"message", "type", "param", "code"}
        assert resp.headers["X-Request-Id"]


async def test_body_over_the_limit_is_413_before_reading(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    """A declared Content-Length over max_body_size is refused without forwarding anything."""
    config = write_config(tmp_path, _config(tmp_path, fake_upstream.url))
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        resp = await client.post(f"{gw.url}/v1/chat/completions", data=b"x" * 5000)
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == "request_too_large"

        async def chunked() -> object:
            for _ in range(10):
                yield b"y" * 1000

        resp = await client.post(f"{gw.url}/v1/chat/completions", data=chunked())
        assert resp.status == 413
    assert fake_upstream.state.received == []


async def _stall_after(gw_url: str, sent: bytes) -> tuple[bytes, float]:
    """Send `sent` on a raw connection and stall: what comes back, and after how long."""
    host, port = gw_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(sent)
    await writer.drain()
    started = time.monotonic()
    reply = await asyncio.wait_for(reader.read(4096), timeout=5)
    writer.close()
    return reply, time.monotonic() - started


async def test_slow_client_body_is_dropped(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    """A body that trickles slower than read_timeout gets 408 and the connection is closed."""
    config = write_config(tmp_path, _config(tmp_path, fake_upstream.url))
    async with running_gateway(config) as gw:
        reply, elapsed = await _stall_after(
            gw.url,
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
            b"Content-Type: application/json\r\n\r\n{",
        )
    assert reply.startswith(b"HTTP/1.1 408")
    assert elapsed < 3
    assert fake_upstream.state.received == []


async def test_slow_client_headers_are_dropped(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    """A client that never finishes its request headers is disconnected after read_timeout."""
    config = write_config(tmp_path, _config(tmp_path, fake_upstream.url))
    async with running_gateway(config) as gw:
        reply, elapsed = await _stall_after(
            gw.url, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        )
    assert reply == b""
    assert 0.5 < elapsed < 3
    assert fake_upstream.state.received == []


async def test_upstream_errors_are_relayed(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    """The upstream's own error status and body reach the client unchanged."""
    config = write_config(tmp_path, _config(tmp_path, fake_upstream.url))
    fake_upstream.state.fail_next = [429]
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        resp = await client.post(f"{gw.url}/v1/chat/completions", json=CHAT)
        assert resp.status == 429
        assert (await resp.json())["error"]["message"] == "fake failure 429"


async def test_dead_upstream_is_a_fast_502(tmp_path: Path) -> None:
    """Connection refused becomes a fast 502 upstream_unavailable; the audit counts the tries."""
    text = _config(tmp_path, f"http://127.0.0.1:{free_port()}")
    text = text.replace("attempts: 1", "attempts: 2\n              backoff_base: 1ms")
    config = write_config(tmp_path, text)
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        started = time.monotonic()
        resp = await client.post(f"{gw.url}/v1/chat/completions", json=CHAT)
        assert time.monotonic() - started < 1
        assert resp.status == 502
        error = (await resp.json())["error"]
        assert error["code"] == "upstream_unavailable"
        assert "sk-upstream-secret" not in error["message"]
    event = orjson.loads((tmp_path / "audit.jsonl").read_bytes().splitlines()[0])
    assert (event["status"], event["attempts"], event["error"]) == (502, 2, "upstream_unavailable")


async def test_stalled_upstream_is_a_504(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    """No response headers within the upstream's read_timeout gives 504 upstream_timeout."""
    config = write_config(tmp_path, _config(tmp_path, fake_upstream.url))
    fake_upstream.state.stall = 5
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        started = time.monotonic()
        resp = await client.post(f"{gw.url}/v1/chat/completions", json=CHAT)
        assert resp.status == 504
        assert (await resp.json())["error"]["code"] == "upstream_timeout"
        assert time.monotonic() - started < 4


async def test_stream_is_forwarded_event_by_event(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    """The first SSE event reaches the client long before the upstream finishes the stream."""
    config = write_config(tmp_path, _config(tmp_path, fake_upstream.url))
    fake_upstream.state.event_delay = 0.1
    asked = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        started = time.monotonic()
        resp = await client.post(f"{gw.url}/v1/chat/completions", json=asked)
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        first = await resp.content.readline()
        first_at = time.monotonic() - started
        rest = await resp.read()
        total = time.monotonic() - started
    assert first.startswith(b"data: ")
    assert b"data: [DONE]" in rest
    event = orjson.loads((tmp_path / "audit.jsonl").read_bytes().splitlines()[0])
    assert event["stream"] is True
    assert event["prompt_tokens"] > 0
    assert event["completion_tokens"] == len("You said: hello there") // 4
    # "You said: hello there" is 21 characters, 4 per event, 0.1 s apart.
    assert total > 0.5
    assert first_at < 0.2


async def test_client_disconnect_cancels_the_upstream_stream(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    """A client that goes away mid-stream makes the gateway drop the upstream request."""
    config = write_config(tmp_path, _config(tmp_path, fake_upstream.url))
    fake_upstream.state.event_delay = 0.2
    fake_upstream.state.answer = "x" * 400
    async with running_gateway(config) as gw:
        async with aiohttp.ClientSession() as client:
            resp = await client.post(f"{gw.url}/v1/chat/completions", json={**CHAT, "stream": True})
            await resp.content.readline()
            resp.close()
        await asyncio.wait_for(fake_upstream.state.stream_aborted.wait(), timeout=3)


async def test_audit_event_per_request(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    """Every proxied request leaves one audit line with route, status and counts, no content."""
    config = write_config(tmp_path, _config(tmp_path, fake_upstream.url))
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        await client.post(
            f"{gw.url}/v1/chat/completions",
            json=CHAT,
            headers={"Authorization": "Bearer sk-client-key", "X-Request-Id": "audit-1"},
        )
        await client.get(f"{gw.url}/nowhere")
    lines = [orjson.loads(line) for line in (tmp_path / "audit.jsonl").read_bytes().splitlines()]
    event = lines[0]
    assert (event["request_id"], event["status"]) == ("audit-1", 200)
    assert event["route"] == "v1"
    assert event["upstream"] == "fake"
    assert event["model"] == "gpt-fake"
    assert event["attempts"] == 1
    assert event["prompt_tokens"] > 0
    assert event["client"].startswith("key:")
    assert lines[1]["status"] == 404
    text = (tmp_path / "audit.jsonl").read_text()
    assert "hello there" not in text
    assert "sk-client-key" not in text


@pytest.mark.parametrize("path", ["/health", "/health/ready", "/health/detailed"])
async def test_health_endpoints(tmp_path: Path, fake_upstream: FakeUpstream, path: str) -> None:
    """The health endpoints answer 200 with JSON on a healthy gateway."""
    config = write_config(tmp_path, _config(tmp_path, fake_upstream.url))
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        resp = await client.get(gw.url + path)
        assert resp.status == 200
        body = await resp.json()
    if path == "/health":
        assert body == {"status": "ok"}
    if path == "/health/detailed":
        assert body["config"]["generation"] == 1
        assert body["upstreams"]["fake"]
        assert "sk-upstream-secret" not in orjson.dumps(body).decode()
        assert "audit" in body


async def test_metrics_parse_and_count_requests(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    """/metrics is valid Prometheus text and counts requests by route and status."""
    from prometheus_client.parser import text_string_to_metric_families

    config = write_config(tmp_path, _config(tmp_path, fake_upstream.url))
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        await client.post(f"{gw.url}/v1/chat/completions", json=CHAT)
        resp = await client.get(f"{gw.url}/metrics")
        assert resp.status == 200
        text = await resp.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (
        "gatewayd_requests",
        "gatewayd_request_duration_seconds",
        "gatewayd_upstream_duration_seconds",
        "gatewayd_build_info",
        "gatewayd_config_reloads",
        "gatewayd_audit_queue_depth",
    ):
        assert name in families, name
    samples = families["gatewayd_requests"].samples
    assert any(s.labels == {"route": "v1", "status": "200"} and s.value >= 1 for s in samples)


async def test_guarded_request_goes_upstream_as_the_document_read(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    """On a guarded route the upstream gets the body the guard read, serialised again: a key
    given twice (one parser reads the first, another the last) cannot carry unread text."""
    config = write_config(tmp_path, _guarded_config(tmp_path, fake_upstream.url, output="[]"))
    raw = b'{"model":"gpt-fake",  "messages":[{"role":"user","content":"plain words"}]}'
    twice = (
        b'{"model":"gpt-fake","messages":[{"role":"user","content":"a@example.com"}],'
        b'"messages":[{"role":"user","content":"plain words"}]}'
    )
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        headers = {"Content-Type": "application/json"}
        resp = await client.post(f"{gw.url}/v1/chat/completions", data=raw, headers=headers)
        assert resp.status == 200
        assert fake_upstream.state.received[-1].body == orjson.dumps(orjson.loads(raw))
        resp = await client.post(f"{gw.url}/v1/chat/completions", data=twice, headers=headers)
        assert resp.status == 200
        sent = fake_upstream.state.received[-1].body
        assert b"a@example.com" not in sent
        assert sent.count(b'"messages"') == 1


async def test_upstream_breaking_off_a_stream_ends_it_with_an_error_event(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    """An upstream that dies mid-stream leaves the client an error event and a finished stream."""
    config = write_config(tmp_path, _config(tmp_path, fake_upstream.url))
    fake_upstream.state.break_after = 2
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        resp = await client.post(f"{gw.url}/v1/chat/completions", json={**CHAT, "stream": True})
        body = await asyncio.wait_for(resp.read(), timeout=5)
    events = [e for e in body.split(b"\n\n") if e]
    error = orjson.loads(events[-1].removeprefix(b"data: "))["error"]
    assert error["code"] == "upstream_unavailable"
    assert b"[DONE]" not in body
    audit = orjson.loads((tmp_path / "audit.jsonl").read_bytes().splitlines()[0])
    assert (audit["status"], audit["error"]) == (200, "upstream_unavailable")


async def test_upstream_breaking_off_a_body_cuts_the_client_connection(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    """A relayed body the upstream breaks off reaches the client incomplete, never as if whole."""
    config = write_config(tmp_path, _config(tmp_path, fake_upstream.url))
    fake_upstream.state.break_after = 3
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        resp = await client.get(f"{gw.url}/v1/files/f1/content")
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(resp.read(), timeout=5)
        fake_upstream.state.break_after = None
        whole = await client.get(f"{gw.url}/v1/files/f1/content")
        assert len(await whole.read()) == 8 * 1024


async def test_compressed_request_body_is_forwarded_decoded(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    """A gzip request body is read decoded (and bounded as such) and goes upstream as identity."""
    import gzip

    config = write_config(tmp_path, _config(tmp_path, fake_upstream.url))
    raw = orjson.dumps(CHAT)
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        resp = await client.post(
            f"{gw.url}/v1/chat/completions",
            data=gzip.compress(raw),
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
        assert resp.status == 200
        assert (await resp.json())["choices"][0]["message"]["content"] == "You said: hello there"
        bomb = gzip.compress(b" " * 100_000)
        resp = await client.post(
            f"{gw.url}/v1/chat/completions",
            data=bomb,
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
        assert resp.status == 413
    received = fake_upstream.state.received[-1]
    assert received.body == raw
    assert "Content-Encoding" not in received.headers


async def test_guarded_answer_compressed_anyway_is_inflated_or_refused(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    """An upstream that compresses despite Accept-Encoding: identity is inflated and guarded;
    an encoding the guard cannot read is refused rather than relayed unread."""
    config = write_config(tmp_path, _guarded_config(tmp_path, fake_upstream.url, output="[pii]"))
    chat = {"model": "gpt-fake", "messages": [{"role": "user", "content": "mail a@example.com"}]}
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        fake_upstream.state.answer_encoding = "gzip"
        resp = await client.post(f"{gw.url}/v1/chat/completions", json=chat)
        assert resp.status == 200
        assert "Content-Encoding" not in resp.headers
        content = (await resp.json())["choices"][0]["message"]["content"]
        assert content == "You said: mail a@example.com"
        assert fake_upstream.state.received[-1].headers["Accept-Encoding"] == "identity"

        fake_upstream.state.answer_encoding = "br"
        resp = await client.post(f"{gw.url}/v1/chat/completions", json=chat)
        assert resp.status == 502
        assert (await resp.json())["error"]["code"] == "upstream_unavailable"
