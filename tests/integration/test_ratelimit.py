"""Client keys and rate limits through a real gateway and fake upstream on loopback."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from gatewayd.observability import metrics
from tests.conftest import FakeUpstream
from tests.harness import running_gateway, write_config

CHAT = {"model": "gpt-fake", "messages": [{"role": "user", "content": "hello there"}]}
KEY = "sk-app-0123456789"
DIGEST = hashlib.sha256(KEY.encode()).hexdigest()
AUTH = {"Authorization": f"Bearer {KEY}"}


def _config(tmp_path: Path, upstream: str, extra: str = "", route: str = "") -> str:
    return f"""
        logging:
          level: warning
        upstreams:
          fake:
            url: {upstream}
            api_key: sk-upstream-secret
            retry:
              attempts: 1
        routes:
          v1:
            prefix: /v1/
            upstream: fake
            {route}
        audit:
          sink: jsonl
          path: {tmp_path}/audit.jsonl
          flush_interval: 50ms
        {extra}
    """


def _ratelimit(**limits: object) -> str:
    """A ratelimit section with these keys, for _config's `extra`."""
    lines = "".join(f"\n          {key}: {value}" for key, value in limits.items())
    return f"\n        ratelimit:{lines}\n"


def _clients(models: str = "") -> str:
    return f"""
        clients:
          app:
            key_sha256: {DIGEST}
            {models}
    """


async def _chat(
    client: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None, **body: Any
) -> tuple[int, dict[str, str], bytes]:
    async with client.post(
        f"{url}/v1/chat/completions", json={**CHAT, **body}, headers=headers or {}
    ) as resp:
        return resp.status, dict(resp.headers), await resp.read()


def _audit(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "audit.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


async def test_a_required_key_is_checked_before_anything_else(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    """With require_client_key, a missing or unknown key gets 401 with WWW-Authenticate."""
    extra = _clients() + "\n        auth:\n          require_client_key: true\n"
    config = write_config(tmp_path, _config(tmp_path, fake_upstream.url, extra))
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        for headers in ({}, {"Authorization": "Bearer sk-guess"}, {"Authorization": KEY}):
            status, got, body = await _chat(client, gw.url, headers)
            assert status == 401
            assert got["WWW-Authenticate"].startswith("Bearer")
            error = orjson.loads(body)["error"]
            assert error["code"] == "invalid_api_key"
            assert "sk-guess" not in error["message"]
        # An unknown path is 401 too: the route table is not shown to strangers.
        async with client.get(f"{gw.url}/nowhere") as resp:
            assert resp.status == 401
        assert fake_upstream.state.received == []
        status, _, _ = await _chat(client, gw.url, AUTH)
        assert status == 200
    assert fake_upstream.state.received[0].headers["Authorization"] == "Bearer sk-upstream-secret"
    await asyncio.sleep(0.2)
    clients = [event["client"] for event in _audit(tmp_path)]
    assert clients[-1] == "client:app"
    assert clients[0].startswith("ip:")


async def test_models_outside_the_list_are_refused_before_the_upstream(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    """A model off the client's list and a non-string model get 403; a body whose model
    cannot be read is refused too, before the upstream."""
    extra = _clients('models: [gpt-fake, "text-embedding-*"]')
    config = write_config(tmp_path, _config(tmp_path, fake_upstream.url, extra))
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        assert (await _chat(client, gw.url, AUTH))[0] == 200
        for model in ("gpt-4o", ["gpt-fake"], "gpt-fake-2"):
            status, _, body = await _chat(client, gw.url, AUTH, model=model)
            assert status == 403
            assert orjson.loads(body)["error"]["code"] == "model_not_allowed"
        async with client.post(
            f"{gw.url}/v1/chat/completions",
            data=b"model=gpt-4o",
            headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"},
        ) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["code"] == "invalid_json"
        # An endpoint no shape describes: its JSON is read for the model, else 403.
        async with client.post(f"{gw.url}/v1/novel", data=b"model=gpt-4o", headers=AUTH) as resp:
            assert resp.status == 403
        # A client without a list, or an unknown caller, is not held to one.
        assert (await _chat(client, gw.url, {}, model="gpt-4o"))[0] == 200
    assert len(fake_upstream.state.received) == 2


async def test_the_gateways_own_errors_carry_the_budget_headers(tmp_path: Path) -> None:
    """A 502 for an unreachable upstream still spent a request: its headers say so."""
    extra = _ratelimit(requests_per_minute=60, burst=3)
    config = write_config(tmp_path, _config(tmp_path, "http://127.0.0.1:1", extra))
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        status, headers, body = await _chat(client, gw.url)
    assert status == 502
    assert orjson.loads(body)["error"]["code"] == "upstream_unavailable"
    assert headers["x-ratelimit-limit-requests"] == "60"
    assert headers["x-ratelimit-remaining-requests"] == "2"


async def test_requests_past_the_burst_get_429_with_openai_headers(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    """A burst passes with x-ratelimit-* headers; the next is 429 with an integer Retry-After."""
    extra = _ratelimit(requests_per_minute=60, burst=3)
    config = write_config(tmp_path, _config(tmp_path, fake_upstream.url, extra))
    before = metrics.RATELIMIT_REJECTIONS.labels("v1", "requests")._value.get()
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        remaining = []
        for _ in range(3):
            status, headers, _ = await _chat(client, gw.url)
            assert status == 200
            assert headers["x-ratelimit-limit-requests"] == "60"
            remaining.append(headers["x-ratelimit-remaining-requests"])
        assert remaining == ["2", "1", "0"]
        status, headers, body = await _chat(client, gw.url)
    assert status == 429
    assert headers["Retry-After"] == "1"
    assert 0 < int(headers["retry-after-ms"]) <= 1000
    assert headers["x-ratelimit-remaining-requests"] == "0"
    error = orjson.loads(body)["error"]
    assert (error["code"], error["type"]) == ("rate_limit_exceeded", "requests")
    assert "60 requests per minute" in error["message"]
    assert len(fake_upstream.state.received) == 3
    assert metrics.RATELIMIT_REJECTIONS.labels("v1", "requests")._value.get() == before + 1
    await asyncio.sleep(0.2)
    assert [e["ratelimit"] for e in _audit(tmp_path)] == ["allowed"] * 3 + ["refused:requests"]


async def test_clients_and_routes_override_the_defaults(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    """A client's own limit beats the route's, which beats the default; each has its budget."""
    extra = (
        _clients("requests_per_minute: 600\n            burst: 5")
        + "\n        ratelimit:\n          requests_per_minute: 60\n          burst: 1\n"
    )
    route = "ratelimit: {requests_per_minute: 60, burst: 2}"
    config = write_config(tmp_path, _config(tmp_path, fake_upstream.url, extra, route))
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        anonymous = [(await _chat(client, gw.url))[0] for _ in range(3)]
        app = [(await _chat(client, gw.url, AUTH))[0] for _ in range(6)]
    assert anonymous == [200, 200, 429]
    assert app == [200] * 5 + [429]


async def test_shadow_mode_counts_and_lets_through(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    """shadow: true lets every request through and counts the ones it would have refused."""
    extra = """
        ratelimit:
          requests_per_minute: 60
          burst: 1
          shadow: true
    """
    config = write_config(tmp_path, _config(tmp_path, fake_upstream.url, extra))
    before = metrics.RATELIMIT_SHADOW.labels("v1", "requests")._value.get()
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        statuses = [(await _chat(client, gw.url))[0] for _ in range(4)]
    assert statuses == [200] * 4
    assert metrics.RATELIMIT_SHADOW.labels("v1", "requests")._value.get() == before + 3
    await asyncio.sleep(0.2)
    assert [e["ratelimit"] for e in _audit(tmp_path)][-1] == "shadow:requests"


async def test_a_small_max_tokens_beside_a_large_one_reserves_the_large(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    """max_tokens 1 with max_completion_tokens 10000 reserves 10000 and is refused up front."""
    extra = _ratelimit(tokens_per_minute=5000)
    config = write_config(tmp_path, _config(tmp_path, fake_upstream.url, extra))
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        status, headers, body = await _chat(
            client, gw.url, max_tokens=1, max_completion_tokens=10000
        )
        assert status == 429
        assert headers["x-should-retry"] == "false"
        assert orjson.loads(body)["error"]["type"] == "tokens"
        status, headers, _ = await _chat(client, gw.url, max_tokens=100)
    assert status == 200
    assert headers["x-ratelimit-limit-tokens"] == "5000"
    assert orjson.loads(fake_upstream.state.received[-1].body) == {**CHAT, "max_tokens": 100}


async def test_token_reservations_settle_to_the_real_usage(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    """A reservation far above the usage is given back, so the next request fits."""
    extra = _ratelimit(tokens_per_minute=2000)
    config = write_config(tmp_path, _config(tmp_path, fake_upstream.url, extra))
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        # Each reserves ~1500 tokens and uses a few dozen: without settling
        # the second would not fit.
        for _ in range(5):
            status, headers, _ = await _chat(client, gw.url, max_tokens=1500)
            assert status == 200
        assert int(headers["x-ratelimit-remaining-tokens"]) < 2000 - 1500


async def test_a_stream_is_asked_for_its_usage_and_the_client_never_sees_it(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    """Under a token limit a stream gets include_usage upstream; its usage event is taken
    out for a client that did not ask, and the reservation settles to it."""
    extra = _ratelimit(tokens_per_minute=2000)
    config = write_config(tmp_path, _config(tmp_path, fake_upstream.url, extra))
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        for _ in range(4):
            status, headers, body = await _chat(client, gw.url, stream=True, max_tokens=1500)
            assert status == 200
            assert headers["x-ratelimit-limit-tokens"] == "2000"
            assert b'"choices":[]' not in body
            assert body.endswith(b"data: [DONE]\n\n")
        sent = orjson.loads(fake_upstream.state.received[-1].body)
        assert sent["stream_options"] == {"include_usage": True}
        # A client that asked for usage keeps its event.
        _, _, body = await _chat(
            client, gw.url, stream=True, max_tokens=10, stream_options={"include_usage": True}
        )
        assert b'"choices":[]' in body
    await asyncio.sleep(0.2)
    events = _audit(tmp_path)
    assert all(e["completion_tokens"] for e in events)


async def test_concurrent_requests_past_max_concurrent_are_refused(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    """max_concurrent bounds a key's requests in flight, streams included, until they end."""
    extra = _ratelimit(max_concurrent=2)
    config = write_config(tmp_path, _config(tmp_path, fake_upstream.url, extra))
    fake_upstream.state.stall = 0.5
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        results = await asyncio.gather(*(_chat(client, gw.url, stream=True) for _ in range(4)))
        statuses = sorted(status for status, _, _ in results)
        assert statuses == [200, 200, 429, 429]
        refused = next(body for status, _, body in results if status == 429)
        assert orjson.loads(refused)["error"]["type"] == "concurrency"
        fake_upstream.state.stall = 0
        assert (await _chat(client, gw.url))[0] == 200


async def test_max_concurrent_in_redis_holds_across_gateways(
    tmp_path: Path, fake_upstream: FakeUpstream, redis_url: str
) -> None:
    """Two gateways share one key's slots in Redis: two streams in flight in all, not each."""
    text = _redis_config(tmp_path, fake_upstream.url, redis_url, "max_concurrent: 2")
    config = write_config(tmp_path, text)
    fake_upstream.state.stall = 0.5
    async with (
        running_gateway(config) as one,
        running_gateway(config) as two,
        aiohttp.ClientSession() as client,
    ):
        results = await asyncio.gather(
            *(_chat(client, gw.url, stream=True) for gw in (one, two, one, two, one, two))
        )
        assert sorted(status for status, _, _ in results) == [200] * 2 + [429] * 4
        fake_upstream.state.stall = 0
        # The slots go back in the background, just after the answers.
        await asyncio.sleep(0.2)
        assert [(await _chat(client, gw.url))[0] for gw in (one, two)] == [200, 200]


async def test_the_budget_survives_a_reload(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    """Budgets live in the process, not the config generation: swapping runtimes resets nothing."""
    from gatewayd.runtime import build_runtime

    extra = _ratelimit(requests_per_minute=60, burst=2)
    config = write_config(tmp_path, _config(tmp_path, fake_upstream.url, extra))
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        assert [(await _chat(client, gw.url))[0] for _ in range(2)] == [200, 200]
        runtime = build_runtime(config, 2, gw.redis)
        await runtime.start()
        old, gw.holder.current = gw.holder.current, runtime
        await old.close()
        assert (await _chat(client, gw.url))[0] == 429


@pytest.mark.parametrize("mode", ["allow", "deny"])
async def test_a_dead_redis_follows_on_backend_error(
    tmp_path: Path, fake_upstream: FakeUpstream, redis_url: str, mode: str
) -> None:
    """With Redis unreachable, allow uses local budgets and deny answers 503; both counted."""
    extra = f"""
        ratelimit:
          backend: redis
          redis_url: redis://127.0.0.1:1/0
          redis_timeout: 50ms
          requests_per_minute: 60
          burst: 2
          on_backend_error: {mode}
    """
    config = write_config(tmp_path, _config(tmp_path, fake_upstream.url, extra))
    errors = sum(
        metrics.RATELIMIT_BACKEND_ERRORS.labels(k)._value.get() for k in ("connection", "skipped")
    )
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        results = [await _chat(client, gw.url) for _ in range(3)]
    statuses = [status for status, _, _ in results]
    if mode == "allow":
        assert statuses == [200, 200, 429]
    else:
        assert statuses == [503] * 3
        assert orjson.loads(results[0][2])["error"]["code"] == "rate_limiter_unavailable"
    after = sum(
        metrics.RATELIMIT_BACKEND_ERRORS.labels(k)._value.get() for k in ("connection", "skipped")
    )
    assert after == errors + 3


def _redis_config(tmp_path: Path, upstream: str, url: str, limits: str) -> str:
    extra = f"""
        ratelimit:
          backend: redis
          redis_url: {url}
          # Generous: these tests are about sharing, on a machine that may be busy.
          redis_timeout: 1s
          on_backend_error: deny
          {limits}
    """
    return _config(tmp_path, upstream, extra)


async def test_two_gateways_on_one_redis_share_one_budget(
    tmp_path: Path, fake_upstream: FakeUpstream, redis_url: str
) -> None:
    """Two gateways hammered at once never let through more than burst + rate x time."""
    text = _redis_config(
        tmp_path, fake_upstream.url, redis_url, "requests_per_minute: 120\n          burst: 5"
    )
    config = write_config(tmp_path, text)
    loop = asyncio.get_running_loop()
    async with (
        running_gateway(config) as one,
        running_gateway(config) as two,
        aiohttp.ClientSession() as client,
    ):
        started = loop.time()
        deadline = started + 2.0

        async def hammer(url: str) -> list[int]:
            statuses = []
            while loop.time() < deadline:
                statuses.append((await _chat(client, url))[0])
            return statuses

        results = await asyncio.gather(*(hammer(gw.url) for gw in (one, two) for _ in range(8)))
        elapsed = loop.time() - started
        async with client.get(f"{one.url}/health/detailed") as resp:
            health = (await resp.json())["ratelimit"]
    assert (health["backend"], health["healthy"]) == ("redis", True)
    assert health["latency_ms"] > 0
    statuses = [s for r in results for s in r]
    allowed = statuses.count(200)
    assert set(statuses) == {200, 429}
    # Two a second after the burst of five.
    assert 5 <= allowed <= 5 + int(elapsed * 2) + 1


async def test_redis_going_away_and_coming_back(
    tmp_path: Path, fake_upstream: FakeUpstream, redis_url: str
) -> None:
    """Cut from Redis, deny answers 503 at once; once Redis is back, it decides again."""
    from urllib.parse import urlsplit

    from tests.fakes.tcp_proxy import TcpProxy

    parts = urlsplit(redis_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    await proxy.start()
    via = f"redis://127.0.0.1:{proxy.port}{parts.path}"
    text = _redis_config(
        tmp_path, fake_upstream.url, via, "requests_per_minute: 6\n          burst: 2"
    )
    config = write_config(tmp_path, text)
    try:
        async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
            assert (await _chat(client, gw.url))[0] == 200
            await proxy.cut()
            loop = asyncio.get_running_loop()
            started = loop.time()
            assert (await _chat(client, gw.url))[0] == 503
            assert loop.time() - started < 1.0
            await proxy.restore()
            # Skipped for a second after the failure, then asked again.
            await asyncio.sleep(1.1)
            assert (await _chat(client, gw.url))[0] == 200
            # The budget in Redis held the first request: one left, then refused.
            assert (await _chat(client, gw.url))[0] == 429
    finally:
        await proxy.cut()


async def test_a_token_limit_with_streams_holds_across_gateways(
    tmp_path: Path, fake_upstream: FakeUpstream, redis_url: str
) -> None:
    """Streamed answers settle their reservations in Redis, so two gateways share a token budget."""
    text = _redis_config(tmp_path, fake_upstream.url, redis_url, "tokens_per_minute: 3000")
    config = write_config(tmp_path, text)
    async with (
        running_gateway(config) as one,
        running_gateway(config) as two,
        aiohttp.ClientSession() as client,
    ):
        # Each reserves ~1000 and uses a few dozen: settling keeps them all in.
        for gw in (one, two, one, two, one, two):
            status, _headers, _ = await _chat(client, gw.url, stream=True, max_tokens=1000)
            assert status == 200
        # Without settling, both would now refuse; a reservation of 2900 must wait.
        status, _, _ = await _chat(client, one.url, max_tokens=2900)
        assert status == 429
        status, _, _ = await _chat(client, two.url, max_tokens=2000)
        assert status == 200


async def test_rotating_made_up_keys_buys_no_budget(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    """Under key: client, a caller sending a new unknown key each time spends one budget."""
    extra = _ratelimit(requests_per_minute=60, burst=2)
    config = write_config(tmp_path, _config(tmp_path, fake_upstream.url, extra))
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        statuses = [
            (await _chat(client, gw.url, {"Authorization": f"Bearer sk-made-up-{n}"}))[0]
            for n in range(4)
        ]
    assert statuses == [200, 200, 429, 429]


async def test_concurrent_requests_racing_one_key_get_exactly_the_burst(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    """Twenty requests at once against a burst of five: five pass, fifteen are refused."""
    extra = _ratelimit(requests_per_minute=6, burst=5)
    config = write_config(tmp_path, _config(tmp_path, fake_upstream.url, extra))
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        results = await asyncio.gather(*(_chat(client, gw.url) for _ in range(20)))
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200] * 5 + [429] * 15


async def _form(
    client: aiohttp.ClientSession, url: str, path: str, fields: dict[str, str], upload: bytes
) -> int:
    form = aiohttp.FormData()
    for name, value in fields.items():
        form.add_field(name, value)
    form.add_field("file", upload, filename="upload.bin", content_type="application/octet-stream")
    async with client.post(f"{url}{path}", data=form, headers=AUTH) as resp:
        await resp.read()
        return resp.status


async def test_forms_and_batch_files_are_held_to_the_model_list(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    """A form's model field and every line of an uploaded batch file must be on the list."""
    extra = _clients("models: [gpt-fake, whisper-1]")
    config = write_config(tmp_path, _config(tmp_path, fake_upstream.url, extra))

    def batch(*models: str) -> bytes:
        lines = [
            {
                "custom_id": str(n),
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {**CHAT, "model": model},
            }
            for n, model in enumerate(models)
        ]
        return b"\n".join(orjson.dumps(line) for line in lines)

    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        audio = "/v1/audio/transcriptions"
        assert await _form(client, gw.url, audio, {"model": "whisper-1"}, b"RIFF") == 200
        assert await _form(client, gw.url, audio, {"model": "gpt-4o-transcribe"}, b"RIFF") == 403
        files = "/v1/files"
        good = batch("gpt-fake", "gpt-fake")
        assert await _form(client, gw.url, files, {"purpose": "batch"}, good) == 200
        sneaky = batch("gpt-fake", "gpt-4o")
        assert await _form(client, gw.url, files, {"purpose": "batch"}, sneaky) == 403
    assert len(fake_upstream.state.received) == 2


async def test_a_guarded_stream_under_a_token_limit_reads_the_usage_it_asked_for(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    """On a guarded route the usage events the gateway asked for pass the output guard,
    are taken out for the client, and settle the reservation."""
    extra = (
        _ratelimit(tokens_per_minute=2000)
        + """
        filters:
          pii: {kind: pii}
        policies:
          guard: {mode: redact, input: [pii], output: [pii], restore: true}
    """
    )
    config = write_config(tmp_path, _config(tmp_path, fake_upstream.url, extra, "policy: guard"))
    message = [{"role": "user", "content": "mail jane@example.com please"}]
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        for _ in range(3):
            status, _, body = await _chat(
                client, gw.url, messages=message, stream=True, max_tokens=1500
            )
            assert status == 200
            assert b"jane@example.com" in body
            assert b'"choices":[]' not in body
            assert body.endswith(b"data: [DONE]\n\n")
    sent = orjson.loads(fake_upstream.state.received[-1].body)
    assert sent["stream_options"] == {"include_usage": True}
    assert "jane@example.com" not in fake_upstream.state.received[-1].body.decode()
