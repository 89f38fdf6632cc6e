"""A hostile body at the size limit is scanned while the gateway keeps answering.

The gateway runs as its own process: the fake upstream (which parses and
echoes the megabyte) and the polling client share this test's loop, and
their work must not be counted as the gateway's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import aiohttp
import orjson
import pytest

from tests.conftest import FakeUpstream
from tests.e2e.conftest import DaemonProcess

pytestmark = pytest.mark.e2e

StartDaemon = Callable[[str], Awaitable[DaemonProcess]]

# The fake upstream takes up to 1 MiB, and redaction makes the body longer.
MAX_BODY = 512 * 1024
# Each a unit that is slow to scan when repeated: e-mails between tabs in a
# text with a colon, digits between spaces, '@' runs, private key headers,
# assignments. Each gets an equal share of the body.
HOSTILE_UNITS = ("a@b.cc\t", "1 ", "@", "-----BEGIN PRIVATE KEY-----", "password=")
HEALTH_BOUND = 0.2


def _config(upstream_url: str) -> str:
    return f"""
        server:
          listen: "{{listen}}"
          max_body_size: {MAX_BODY}
          read_timeout: 30s
        logging:
          level: warning
        upstreams:
          fake:
            url: {upstream_url}
            read_timeout: 60s
            total_timeout: 120s
            retry:
              attempts: 1
        filters:
          pii:
            kind: pii
          secrets:
            kind: secrets
        policies:
          guard:
            mode: redact
            input: [secrets, pii]
            output: [pii]
            restore: true
        routes:
          v1:
            prefix: /v1/
            upstream: fake
            policy: guard
        audit:
          sink: off
    """


def _hostile_body() -> bytes:
    """A chat request of MAX_BODY bytes at most whose text is made of HOSTILE_UNITS."""
    share = MAX_BODY // len(HOSTILE_UNITS)
    # The colon in front makes every e-mail's URL check run.
    content = "see: " + "".join((unit * (share // len(unit) + 1))[:share] for unit in HOSTILE_UNITS)
    while True:
        doc = {"model": "gpt-fake", "messages": [{"role": "user", "content": content}]}
        body = orjson.dumps(doc)
        if len(body) <= MAX_BODY:
            return body
        # A character is one byte or more (a tab is two in JSON).
        content = content[: len(content) - (len(body) - MAX_BODY)]


async def test_health_answers_quickly_while_a_hostile_body_is_scanned(
    start_daemon: StartDaemon, fake_upstream: FakeUpstream
) -> None:
    """Every /health poll answers within 200 ms while a maximum-size hostile chat is guarded."""
    gw = await start_daemon(_config(fake_upstream.url))
    body = _hostile_body()
    async with aiohttp.ClientSession() as client:
        chat = asyncio.ensure_future(
            client.post(
                f"{gw.url}/v1/chat/completions",
                data=body,
                headers={"Content-Type": "application/json"},
            )
        )
        # Back to back, so a poll is in flight whenever the loop could stall.
        waits: list[float] = []
        while not chat.done():
            start = time.monotonic()
            async with client.get(f"{gw.url}/health") as health:
                assert health.status == 200
            waits.append(time.monotonic() - start)
        response = await chat
        assert response.status == 200
        assert len(await response.read()) > MAX_BODY // 2
    # The chat took long enough for the polls to mean something.
    assert len(waits) >= 5
    assert max(waits) < HEALTH_BOUND, sorted(waits)[-5:]
