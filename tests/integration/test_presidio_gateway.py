"""A Presidio filter in a gateway policy, on the real analyzer: what clients and operators see."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import orjson

from tests.conftest import FakeUpstream
from tests.fakes.presidio_server import Analyzer
from tests.harness import running_gateway, write_config

IBAN = "DE89 3704 0044 0532 0130 00"


def _config(tmp_path: Path, upstream: str, analyzer: str, on_error: str = "block") -> str:
    return f"""
        logging:
          level: warning
        upstreams:
          fake:
            url: {upstream}
            retry:
              attempts: 1
        routes:
          v1:
            prefix: /v1/
            upstream: fake
            policy: deep
        filters:
          pii:
            kind: pii
            entities: [EMAIL_ADDRESS]
          presidio:
            kind: presidio
            url: {analyzer}
            timeout: 300ms
            on_error: {on_error}
            entities: [IBAN_CODE, CREDIT_CARD, EMAIL_ADDRESS]
        policies:
          deep:
            mode: redact
            input: [pii, presidio]
            restore: true
        audit:
          sink: jsonl
          path: {tmp_path}/audit.jsonl
          flush_interval: 20ms
    """


def _chat(*texts: str) -> dict[str, object]:
    roles = ("user", "assistant")
    return {
        "model": "gpt-fake",
        "messages": [{"role": roles[i % 2], "content": t} for i, t in enumerate(texts)],
    }


async def test_presidio_findings_are_redacted_and_restored(
    tmp_path: Path, fake_upstream: FakeUpstream, analyzer: Analyzer
) -> None:
    """An IBAN only Presidio knows goes upstream as a placeholder and comes back restored."""
    config = write_config(tmp_path, _config(tmp_path, fake_upstream.url, analyzer.url))
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        resp = await client.post(f"{gw.url}/v1/chat/completions", json=_chat(f"Prélèvement {IBAN}"))
        assert resp.status == 200
        answer = (await resp.json())["choices"][0]["message"]["content"]
    assert answer == f"You said: Prélèvement {IBAN}"
    sent = orjson.loads(fake_upstream.state.received[-1].body)
    assert sent["messages"][0]["content"] == "Prélèvement <IBAN_CODE_1>"


async def test_multi_turn_sends_only_new_messages(
    tmp_path: Path, fake_upstream: FakeUpstream, analyzer: Analyzer
) -> None:
    """Each turn of a growing conversation sends Presidio only the messages it has not seen."""
    config = write_config(tmp_path, _config(tmp_path, fake_upstream.url, analyzer.url))
    turns = [f"turn {n}: my IBAN is {IBAN}" if n == 0 else f"turn {n} text" for n in range(6)]
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        for k in range(1, len(turns) + 1):
            before = analyzer.state.texts
            resp = await client.post(f"{gw.url}/v1/chat/completions", json=_chat(*turns[:k]))
            assert resp.status == 200
            assert analyzer.state.texts - before == 1, f"turn {k}"
    assert analyzer.state.calls == len(turns)


async def test_analyzer_down_on_error_block_refuses(
    tmp_path: Path, fake_upstream: FakeUpstream, analyzer: Analyzer
) -> None:
    """With the analyzer gone and on_error block: 503 guardrail_unavailable, upstream untouched."""
    config = write_config(tmp_path, _config(tmp_path, fake_upstream.url, analyzer.url))
    await analyzer.server.close()
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        resp = await client.post(f"{gw.url}/v1/chat/completions", json=_chat("hello"))
        assert resp.status == 503
        error = (await resp.json())["error"]
        assert error["code"] == "guardrail_unavailable"
        assert "presidio" in error["message"]
        ready = await client.get(f"{gw.url}/health/ready")
        assert ready.status == 503
        assert (await ready.json())["reasons"] == ["filter presidio unreachable"]
    assert fake_upstream.state.received == []


async def test_analyzer_down_on_error_allow_forwards_unchecked(
    tmp_path: Path, fake_upstream: FakeUpstream, analyzer: Analyzer
) -> None:
    """With on_error allow the request goes through, audited as unchecked; readiness holds."""
    text = _config(tmp_path, fake_upstream.url, analyzer.url, on_error="allow")
    config = write_config(tmp_path, text)
    await analyzer.server.close()
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        resp = await client.post(f"{gw.url}/v1/chat/completions", json=_chat("hello"))
        assert resp.status == 200
        ready = await client.get(f"{gw.url}/health/ready")
        assert ready.status == 200
    event = orjson.loads((tmp_path / "audit.jsonl").read_bytes().splitlines()[0])
    assert event["action"] == "unchecked"
    assert event["findings"]["unchecked"] == ["presidio"]


async def test_detailed_health_shows_the_analyzer(
    tmp_path: Path, fake_upstream: FakeUpstream, analyzer: Analyzer
) -> None:
    """/health/detailed reports the analyzer's health, latency and breaker state."""
    config = write_config(tmp_path, _config(tmp_path, fake_upstream.url, analyzer.url))
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        body = await (await client.get(f"{gw.url}/health/detailed")).json()
    presidio = body["filters"]["presidio"]
    assert presidio["healthy"] is True
    assert presidio["latency_ms"] >= 0
    assert presidio["breaker"] == "closed"
    assert presidio["on_error"] == "block"
