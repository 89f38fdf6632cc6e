"""Guardrails through the real daemon, as an app developer sees them with the openai SDK."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import openai
import orjson
import pytest

from tests.conftest import AuditDatabase, FakeUpstream
from tests.e2e.conftest import DaemonProcess

pytestmark = pytest.mark.e2e

StartDaemon = Callable[[str], Awaitable[DaemonProcess]]

# Values that must never leave the request path: not in a log line, a metric,
# an audit row or an error message. Unusual enough to grep for.
EMAIL = "canary.q7x3@example.com"
PHONE = "+1 415 555 0142"
CARD = "4111 1111 1111 1111"
SECRET = "sk-proj-Zq9vLm2KxT7wQp4RbN8yHs3Jd6Fc1GaEu5Wo0Vi"
CANARIES = (
    EMAIL,
    PHONE,
    CARD,
    SECRET,
    "4111111111111111",
    "Zq9vLm2KxT7wQp4RbN8yHs3Jd6Fc1GaEu5Wo0Vi",
)


_JSONL = """
          sink: jsonl
          path: ${STATE_DIRECTORY}/audit.jsonl
          flush_interval: 50ms"""


def _config(upstream_url: str, audit: str = _JSONL) -> str:
    return f"""
        server:
          listen: "{{listen}}"
        logging:
          level: debug
          access_log: true
        upstreams:
          fake:
            url: {upstream_url}
        routes:
          v1:
            prefix: /v1/
            upstream: fake
            policy: guard
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
            summary_header: true
            entities:
              CREDIT_CARD: block
        audit:{audit}
    """


def _sdk(daemon: DaemonProcess) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{daemon.url}/v1", api_key="sk-client-key", max_retries=0)


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


async def test_redacted_upstream_restored_client(
    start_daemon: StartDaemon, fake_upstream: FakeUpstream
) -> None:
    """The upstream sees placeholders; the client gets its own values back, plain and streamed."""
    daemon = await start_daemon(_config(fake_upstream.url))
    client = _sdk(daemon)
    text = f"mail {EMAIL} or call {PHONE}, again {EMAIL}"

    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-fake", messages=_user(text)
    )
    chat = raw.parse()
    assert chat.choices[0].message.content == f"You said: {text}"
    assert raw.headers["X-Gatewayd-Guardrail"] == (
        "input=EMAIL_ADDRESS:2,PHONE_NUMBER:1; action=redact"
    )
    sent = orjson.loads(fake_upstream.state.received[-1].body)
    assert sent["messages"][0]["content"] == (
        "mail <EMAIL_ADDRESS_1> or call <PHONE_NUMBER_1>, again <EMAIL_ADDRESS_1>"
    )

    fake_upstream.state.chunk_chars = 3
    stream = await client.chat.completions.create(
        model="gpt-fake", messages=_user(text), stream=True
    )
    pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(pieces) == f"You said: {text}"
    await client.close()


async def test_blocked_request_never_reaches_the_upstream(
    start_daemon: StartDaemon, fake_upstream: FakeUpstream
) -> None:
    """A card number is refused with 400 guardrail_violation naming policy, entity and field."""
    daemon = await start_daemon(_config(fake_upstream.url))
    client = _sdk(daemon)
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(
            model="gpt-fake",
            messages=[{"role": "system", "content": "hi"}, *_user(f"pay with {CARD}")],
        )
    assert info.value.code == "guardrail_violation"
    message = str(info.value.message)
    assert "guard" in message
    assert "CREDIT_CARD" in message
    assert "messages[1].content" in message
    assert fake_upstream.state.received == []
    await client.close()


async def test_output_block_replaces_the_answer(
    start_daemon: StartDaemon, fake_upstream: FakeUpstream
) -> None:
    """A card the model produces blocks the answer: 400 whole, an error event in a stream."""
    daemon = await start_daemon(_config(fake_upstream.url))
    fake_upstream.state.answer = f"sure, use {CARD} for that"
    client = _sdk(daemon)
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="gpt-fake", messages=_user("a card?"))
    assert info.value.code == "guardrail_violation"
    assert "choices[0].message.content" in str(info.value.message)

    stream = await client.chat.completions.create(
        model="gpt-fake", messages=_user("a card?"), stream=True
    )
    seen: list[str] = []

    async def drain() -> None:
        async for chunk in stream:
            if chunk.choices:
                seen.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIError) as streamed:
        await drain()
    assert "guardrail_violation" in str(streamed.value.body) + str(streamed.value.message)
    assert "4111" not in "".join(seen)
    await client.close()


async def _send_canaries(
    daemon: DaemonProcess, fake_upstream: FakeUpstream
) -> tuple[list[str], str, str]:
    """Send every canary through every API the gateway reads; the gateway's error bodies,
    then its /metrics and /health/detailed once the audit has had time to flush."""
    client = _sdk(daemon)
    errors: list[str] = []
    await client.chat.completions.create(
        model="gpt-fake", messages=_user(f"{EMAIL} {PHONE} token {SECRET}")
    )
    stream = await client.chat.completions.create(
        model="gpt-fake", messages=_user(f"{EMAIL} {SECRET}"), stream=True
    )
    async for _ in stream:
        pass
    await client.embeddings.create(model="emb", input=[EMAIL, PHONE])
    # The fields and APIs beyond chat messages: tool schemas, tool results, Responses.
    await client.chat.completions.create(
        model="gpt-fake",
        messages=[
            {"role": "user", "content": "hi", "name": "x"},
            {"role": "tool", "tool_call_id": "c", "content": f"{EMAIL} {PHONE}"},
        ],
        tools=[{"type": "function", "function": {"name": "f", "description": f"to {EMAIL}"}}],
    )
    await client.responses.create(
        model="gpt-fake",
        instructions=f"user {EMAIL}",
        input=[{"type": "function_call_output", "call_id": "c", "output": f"{SECRET} {PHONE}"}],
    )
    try:
        # An unknown field refused: its value must not come back in the error.
        await client.chat.completions.create(
            model="gpt-fake", messages=_user("hi"), extra_body={"extra_context": EMAIL}
        )
    except openai.APIStatusError as exc:
        errors.append(exc.response.text)
    for body in (_user(f"card {CARD} mail {EMAIL}"), _user(f"{SECRET} {CARD}")):
        try:
            await client.chat.completions.create(model="gpt-fake", messages=body)
        except openai.APIStatusError as exc:
            errors.append(exc.response.text)
    fake_upstream.state.answer = f"leak {CARD} and {EMAIL}"
    try:
        await client.chat.completions.create(model="gpt-fake", messages=_user("hi"))
    except openai.APIStatusError as exc:
        errors.append(exc.response.text)
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{daemon.url}/v1/chat/completions",
            data=b'{"messages": [{"content": "' + EMAIL.encode() + b'"',
            headers={"Content-Type": "application/json"},
        ) as resp:
            errors.append(await resp.text())
        async with session.get(f"{daemon.url}/metrics") as resp:
            metrics_text = await resp.text()
        async with session.get(f"{daemon.url}/health/detailed") as resp:
            health_text = await resp.text()
    await client.close()
    await asyncio.sleep(0.3)  # one audit flush interval and then some
    return errors, metrics_text, health_text


def _assert_no_canary(
    daemon: DaemonProcess,
    fake_upstream: FakeUpstream,
    audit: str,
    sent: tuple[list[str], str, str],
) -> None:
    """The audit holds the ten requests' entity counts, and no canary is anywhere."""
    errors, metrics_text, health_text = sent
    assert len(audit.splitlines()) == 10
    assert '"EMAIL_ADDRESS"' in audit
    assert 'gatewayd_guardrail_findings_total{action="redact"' in metrics_text
    assert len(errors) == 5
    upstream_saw = b"\n".join(r.body for r in fake_upstream.state.received).decode()
    for name, text in (
        ("log", daemon.log()),
        ("metrics", metrics_text),
        ("health", health_text),
        ("audit", audit),
        ("errors", "\n".join(errors)),
        ("upstream", upstream_saw),
    ):
        for canary in CANARIES:
            assert canary not in text, f"{canary!r} leaked into the {name}"
    assert "sk-client-key" not in daemon.log() + audit


async def test_no_canary_reaches_logs_metrics_audit_or_errors(
    start_daemon: StartDaemon, fake_upstream: FakeUpstream
) -> None:
    """No raw value sent through the gateway shows in its log, metrics, audit file or errors."""
    daemon = await start_daemon(_config(fake_upstream.url))
    sent = await _send_canaries(daemon, fake_upstream)
    audit = (daemon.config_path.parent / "audit.jsonl").read_text()
    _assert_no_canary(daemon, fake_upstream, audit, sent)


async def test_no_canary_reaches_the_audit_table(
    start_daemon: StartDaemon, fake_upstream: FakeUpstream, audit_db: AuditDatabase
) -> None:
    """With the postgres sink, rows hold entity counts and hashes, never a value, prompt or key."""
    audit = f"""
          sink: postgres
          postgres_dsn: "{audit_db.dsn}"
          flush_interval: 50ms"""
    daemon = await start_daemon(_config(fake_upstream.url, audit))
    sent = await _send_canaries(daemon, fake_upstream)
    # Every column of every row as text: what a reviewer with SELECT sees.
    rows = await audit_db.conn.fetch("SELECT row_to_json(a)::text AS row FROM gatewayd_audit a")
    _assert_no_canary(daemon, fake_upstream, "\n".join(row["row"] for row in rows), sent)
