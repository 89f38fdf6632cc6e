"""Every API a guarded route knows, through the real daemon with the openai SDK: what the
model reads is redacted upstream and restored for the client; what it cannot read is refused."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Awaitable, Callable

import aiohttp
import openai
import orjson
import pytest

from tests.conftest import FakeUpstream
from tests.e2e.conftest import DaemonProcess

pytestmark = pytest.mark.e2e

StartDaemon = Callable[[str], Awaitable[DaemonProcess]]

EMAIL = "canary.e8w2@example.com"
PHONE = "+1 415 555 0199"


def _config(upstream_url: str, unknown: str = "block") -> str:
    return f"""
        server:
          listen: "{{listen}}"
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
        policies:
          guard:
            mode: redact
            input: [pii]
            output: [pii]
            restore: true
            unknown: {unknown}
        audit:
          sink: jsonl
          path: ${{STATE_DIRECTORY}}/audit.jsonl
          flush_interval: 50ms
    """


def _sdk(daemon: DaemonProcess) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{daemon.url}/v1", api_key="sk-client", max_retries=0)


def _upstream_saw(fake_upstream: FakeUpstream) -> bytes:
    return b"\n".join(r.body for r in fake_upstream.state.received)


async def test_tools_names_and_tool_results_are_redacted_upstream(
    start_daemon: StartDaemon, fake_upstream: FakeUpstream
) -> None:
    """Tool descriptions and enums, message names and tool results reach the upstream as
    placeholders; the client's answer comes back restored."""
    daemon = await start_daemon(_config(fake_upstream.url))
    client = _sdk(daemon)
    tools = [
        {
            "type": "function",
            "function": {
                "name": "mail",
                "description": f"mails {EMAIL}",
                "parameters": {
                    "type": "object",
                    "properties": {"to": {"type": "string", "enum": [EMAIL]}},
                },
            },
        }
    ]
    chat = await client.chat.completions.create(
        model="gpt-fake",
        tools=tools,  # type: ignore[arg-type]
        messages=[
            {"role": "user", "content": f"who is {EMAIL}?", "name": "dana"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "mail", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": f"found {EMAIL}, {PHONE}"},
        ],
    )
    saw = _upstream_saw(fake_upstream)
    assert EMAIL.encode() not in saw
    assert PHONE.encode() not in saw
    assert b"<EMAIL_ADDRESS_1>" in saw
    assert chat.choices[0].message.content == f"You said: who is {EMAIL}?"
    await client.close()


async def test_responses_api_whole_and_streamed(
    start_daemon: StartDaemon, fake_upstream: FakeUpstream
) -> None:
    """Responses requests with function_call_output are redacted; whole and streamed
    answers (deltas, done events, the final response) come back restored."""
    daemon = await start_daemon(_config(fake_upstream.url))
    client = _sdk(daemon)
    items = [
        {"type": "function_call", "call_id": "c", "name": "lookup", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c", "output": f"owner is {EMAIL}"},
    ]
    whole = await client.responses.create(model="gpt-fake", input=items)  # type: ignore[arg-type]
    assert whole.output_text == f"You said: owner is {EMAIL}"
    assert EMAIL.encode() not in _upstream_saw(fake_upstream)

    deltas = ""
    done = None
    async with client.responses.stream(model="gpt-fake", input=f"I am {EMAIL}") as stream:
        async for event in stream:
            if event.type == "response.output_text.delta":
                deltas += event.delta
        done = await stream.get_final_response()
    assert deltas == f"You said: I am {EMAIL}"
    assert done.output_text == deltas
    assert EMAIL.encode() not in _upstream_saw(fake_upstream)

    fake_upstream.state.answer = "write to leak.z1@example.org"
    streamed = ""
    async with client.responses.stream(model="gpt-fake", input="hi") as stream:
        async for event in stream:
            if event.type == "response.output_text.delta":
                streamed += event.delta
    assert "leak.z1@example.org" not in streamed
    assert "<EMAIL_ADDRESS_1>" in streamed
    await client.close()


async def test_uploads_audio_prompts_and_batch_files_are_redacted(
    start_daemon: StartDaemon, fake_upstream: FakeUpstream
) -> None:
    """A transcription prompt and a batch file's requests reach the upstream redacted; a
    document upload the gateway cannot read is refused."""
    daemon = await start_daemon(_config(fake_upstream.url))
    client = _sdk(daemon)
    audio = io.BytesIO(b"RIFF" + bytes(64))
    audio.name = "a.wav"
    heard = await client.audio.transcriptions.create(
        model="whisper-1", file=audio, prompt=f"speaker {EMAIL}"
    )
    assert heard.text == f"heard: speaker {EMAIL}"
    line = {
        "custom_id": "1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": [{"role": "user", "content": f"mail {EMAIL}"}]},
    }
    batch = io.BytesIO(json.dumps(line).encode() + b"\n")
    batch.name = "batch.jsonl"
    uploaded = await client.files.create(file=batch, purpose="batch")
    assert uploaded.id == "file-fake"
    saw = _upstream_saw(fake_upstream)
    assert EMAIL.encode() not in saw
    assert saw.count(b"<EMAIL_ADDRESS_1>") == 2

    document = io.BytesIO(b"%PDF-1.7 " + EMAIL.encode())
    document.name = "a.pdf"
    with pytest.raises(openai.BadRequestError) as refused:
        await client.files.create(file=document, purpose="assistants")
    assert refused.value.code == "unsupported_request"
    assert EMAIL not in str(refused.value.body)
    await client.close()


async def test_unknown_fields_and_endpoints_are_refused(
    start_daemon: StartDaemon, fake_upstream: FakeUpstream
) -> None:
    """An unknown field or endpoint gets 400 unsupported_request and never reaches the
    upstream."""
    daemon = await start_daemon(_config(fake_upstream.url))
    client = _sdk(daemon)
    with pytest.raises(openai.BadRequestError) as refused:
        await client.chat.completions.create(
            model="gpt-fake",
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"context_documents": [EMAIL]},
        )
    assert refused.value.code == "unsupported_request"
    assert "context_documents" in refused.value.message
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{daemon.url}/v1/assistants", json={"name": EMAIL}) as resp,
    ):
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "unsupported_request"
    assert fake_upstream.state.received == []
    await client.close()


async def test_unknown_allow_forwards_and_audits_unchecked(
    start_daemon: StartDaemon, fake_upstream: FakeUpstream
) -> None:
    """With unknown: allow an unknown field goes through, and the audit says it was unchecked."""
    allowing = await start_daemon(_config(fake_upstream.url, unknown="allow"))
    client = _sdk(allowing)
    await client.chat.completions.create(
        model="gpt-fake", messages=[{"role": "user", "content": "hi"}], extra_body={"top_k": "x"}
    )
    await client.close()
    await asyncio.sleep(0.3)  # one audit flush interval and then some
    audit = (allowing.config_path.parent / "audit.jsonl").read_text().splitlines()
    assert orjson.loads(audit[-1])["action"] == "unchecked"
