"""server.tls through the real process: the openai SDK over HTTPS, a certificate
rotated by SIGHUP under an open stream, and a bad pair on reload refused."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import signal
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import FakeUpstream
from tests.e2e.conftest import DaemonProcess
from tests.fakes.certs import Pair, TestCA

pytestmark = pytest.mark.e2e

StartDaemon = Callable[..., Awaitable[DaemonProcess]]

LONG_PROMPT = "tell me a long story about certificates"


def _config(upstream_url: str, pair: Pair, *, workers: int = 1) -> str:
    return f"""
        server:
          listen: "{{listen}}"
          workers: {workers}
          shutdown_timeout: 5s
          tls:
            cert: {pair.cert}
            key: {pair.key}
        upstreams:
          fake:
            url: {upstream_url}
        routes:
          v1:
            prefix: /v1/
            upstream: fake
        audit:
          sink: off
    """


async def _start(start_daemon: StartDaemon, tmp_path: Path, text: str) -> tuple[DaemonProcess, str]:
    """The daemon and its https:// base URL (metrics files under tmp_path when workers > 1)."""
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    daemon = await start_daemon(text, env={"RUNTIME_DIRECTORY": str(run)})
    return daemon, daemon.url.replace("http://", "https://")


def _served_fingerprint(url: str, context: ssl.SSLContext) -> str:
    """The sha256 fingerprint of the certificate a new connection to `url` is shown."""
    host, port = url.removeprefix("https://").split(":")
    with (
        socket.create_connection((host, int(port))) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


async def _fingerprints(url: str, context: ssl.SSLContext, count: int = 10) -> set[str]:
    """The fingerprints `count` new connections are shown (any worker may answer each)."""
    return {await asyncio.to_thread(_served_fingerprint, url, context) for _ in range(count)}


async def _get_json(url: str, context: ssl.SSLContext) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url, ssl=context) as resp:
        assert resp.status == 200
        return orjson.loads(await resp.read())


async def _metric(url: str, context: ssl.SSLContext, name: str, labels: dict[str, str]) -> float:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/metrics", ssl=context) as resp,
    ):
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


async def test_the_openai_sdk_talks_https_with_the_test_ca(
    start_daemon: StartDaemon, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """The official SDK, trusting only the test CA, completes a chat and a stream over HTTPS."""
    ca = TestCA(tmp_path / "ca")
    pair = ca.issue("gateway")
    _daemon, url = await _start(start_daemon, tmp_path, _config(fake_upstream.url, pair))
    http = httpx.AsyncClient(verify=ca.client_context())
    client = openai.AsyncOpenAI(
        base_url=f"{url}/v1", api_key="sk-client", max_retries=0, http_client=http
    )
    chat = await client.chat.completions.create(
        model="gpt-fake", messages=[{"role": "user", "content": "ping"}]
    )
    assert chat.choices[0].message.content == "You said: ping"
    stream = await client.chat.completions.create(
        model="gpt-fake", messages=[{"role": "user", "content": "ping"}], stream=True
    )
    parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(parts) == "You said: ping"
    await client.close()

    detailed = await _get_json(f"{url}/health/detailed", ca.client_context())
    assert detailed["tls"]["subject"] == pair.subject
    assert detailed["tls"]["fingerprint_sha256"] == pair.fingerprint_sha256
    assert detailed["tls"]["not_after"] == pair.not_after.isoformat()
    assert "PRIVATE KEY" not in orjson.dumps(detailed).decode()
    expiry = await _metric(
        url, ca.client_context(), "gatewayd_tls_cert_expiry_timestamp_seconds", {}
    )
    assert expiry == pair.not_after.timestamp()
    # A client that does not trust the CA is refused, as it should be.
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as untrusting:
            await untrusting.get(f"{url}/health")


@pytest.mark.parametrize("workers", [1, 2])
async def test_sighup_rotates_the_certificate_under_an_open_stream(
    start_daemon: StartDaemon, fake_upstream: FakeUpstream, tmp_path: Path, workers: int
) -> None:
    """A stream opened before SIGHUP ends whole; every new connection sees the new certificate."""
    ca = TestCA(tmp_path / "ca")
    old, new = ca.issue("gateway-old"), ca.issue("gateway-new")
    served = Pair(tmp_path / "tls.pem", tmp_path / "tls.key", old.subject, "", old.not_after)
    shutil.copy(old.cert, served.cert)
    shutil.copy(old.key, served.key)
    text = _config(fake_upstream.url, served, workers=workers)
    daemon, url = await _start(start_daemon, tmp_path, text)
    context = ca.client_context()
    assert await _fingerprints(url, context) == {old.fingerprint_sha256}

    fake_upstream.state.event_delay = 0.1
    body = {
        "model": "gpt-fake",
        "stream": True,
        "messages": [{"role": "user", "content": LONG_PROMPT}],
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/v1/chat/completions", json=body, ssl=context) as resp,
    ):
        assert resp.status == 200
        first = await resp.content.readline()
        assert first.startswith(b"data: ")
        assert resp.connection is not None
        assert resp.connection.transport is not None
        ssl_object = resp.connection.transport.get_extra_info("ssl_object")
        stream_cert = hashlib.sha256(ssl_object.getpeercert(binary_form=True)).hexdigest()

        # The way certbot's deploy hook or a secret manager would: new files, then HUP.
        shutil.copy(new.cert, served.cert)
        shutil.copy(new.key, served.key)
        daemon.signal(signal.SIGHUP)
        await daemon.notifications("READY=1", count=2)
        assert await _fingerprints(url, context) == {new.fingerprint_sha256}

        rest = await resp.content.read()
    assert stream_cert == old.fingerprint_sha256
    events = [line[6:] for line in (first + rest).splitlines() if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    text_out = "".join(
        orjson.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1]
    )
    assert text_out == f"You said: {LONG_PROMPT}"

    detailed = await _get_json(f"{url}/health/detailed", context)
    assert detailed["tls"]["fingerprint_sha256"] == new.fingerprint_sha256
    reloads = await _metric(url, context, "gatewayd_config_reloads_total", {"result": "success"})
    assert reloads == 1


async def test_a_mismatched_pair_on_reload_keeps_the_old_certificate(
    start_daemon: StartDaemon, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A key that is not the certificate's is refused on SIGHUP, logged with its file and
    counted; the old pair keeps serving, and a fixed pair is taken on the next SIGHUP."""
    ca = TestCA(tmp_path / "ca")
    old, new, stray = ca.issue("gateway-old"), ca.issue("gateway-new"), ca.issue("stray")
    served = Pair(tmp_path / "tls.pem", tmp_path / "tls.key", old.subject, "", old.not_after)
    shutil.copy(old.cert, served.cert)
    shutil.copy(old.key, served.key)
    daemon, url = await _start(start_daemon, tmp_path, _config(fake_upstream.url, served))
    context = ca.client_context()

    shutil.copy(new.cert, served.cert)
    shutil.copy(stray.key, served.key)
    daemon.signal(signal.SIGHUP)
    messages = await daemon.notifications("READY=1", count=2)
    assert "reload failed" in messages[-1]
    assert f"server.tls.key: {served.key} does not match the certificate in {served.cert}" in (
        daemon.log()
    )
    assert await _fingerprints(url, context, count=3) == {old.fingerprint_sha256}
    failed = await _metric(url, context, "gatewayd_config_reloads_total", {"result": "error"})
    assert failed == 1

    shutil.copy(new.key, served.key)
    daemon.signal(signal.SIGHUP)
    await daemon.notifications("READY=1", count=3)
    assert await _fingerprints(url, context, count=3) == {new.fingerprint_sha256}


async def test_mutual_tls_through_the_daemon(
    start_daemon: StartDaemon, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """With client_ca, the SDK presenting a client certificate is served; without one, or
    with one from another CA, the handshake fails and nothing reaches the upstream."""
    ca = TestCA(tmp_path / "ca")
    client = ca.issue("app-1", client=True)
    text = _config(fake_upstream.url, ca.issue("gateway")).replace(
        "          tls:\n", f"          tls:\n            client_ca: {ca.path}\n"
    )
    _, url = await _start(start_daemon, tmp_path, text)

    async def chat(context: ssl.SSLContext) -> str | None:
        async with httpx.AsyncClient(verify=context) as http:
            sdk = openai.AsyncOpenAI(
                base_url=f"{url}/v1", api_key="sk-client", max_retries=0, http_client=http
            )
            answer = await sdk.chat.completions.create(
                model="gpt-fake", messages=[{"role": "user", "content": "ping"}]
            )
            return answer.choices[0].message.content

    assert await chat(ca.client_context(client)) == "You said: ping"
    received = len(fake_upstream.state.received)
    stranger = TestCA(tmp_path / "other", name="other CA").issue("app-2", client=True)
    for refused in (ca.client_context(), ca.client_context(stranger)):
        with pytest.raises(openai.APIConnectionError):
            await chat(refused)
    assert len(fake_upstream.state.received) == received
