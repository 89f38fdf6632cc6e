"""Presidio findings through a policy's Guard: redact and restore, block, and on_error."""

from __future__ import annotations

from typing import Any

import orjson

from gatewayd.config.schema import Action, Mode, PolicyConfig
from gatewayd.guardrails.endpoints import CHAT_COMPLETIONS
from gatewayd.guardrails.payload import json_payload
from gatewayd.guardrails.pipeline import Guard
from gatewayd.guardrails.types import Stage
from tests.fakes.presidio_server import Analyzer, StartFilter

EMAIL = "john.doe@example.com"
CARD = "4111 1111 1111 1111"


def chat(content: str) -> dict[str, Any]:
    """A chat completion request with one user message."""
    return {"model": "m", "messages": [{"role": "user", "content": content}]}


def answer(content: str) -> dict[str, Any]:
    """A chat completion answer with one choice."""
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}


async def guard(start_filter: StartFilter, **filter_config: Any) -> Guard:
    """A redacting, restoring Guard (cards block) with one Presidio filter on input."""
    presidio = await start_filter(**filter_config)
    policy = PolicyConfig(
        name="pii",
        mode=Mode.REDACT,
        input=(presidio.name,),
        restore=True,
        entities={"CREDIT_CARD": Action.BLOCK},
    )
    return Guard(policy, {presidio.name: presidio})


async def test_redacts_upstream_and_restores_for_the_client(start_filter: StartFilter) -> None:
    """The upstream sees a placeholder where the address was; the client gets it back."""
    pii = await guard(start_filter)
    doc = chat(f"Grüße 😀, mail me at {EMAIL}")
    raw = orjson.dumps(doc)
    request = await pii.inspect_request(raw, json_payload(CHAT_COMPLETIONS, doc))
    assert request.verdict.allowed
    sent = orjson.loads(request.body)["messages"][0]["content"]
    assert sent == "Grüße 😀, mail me at <EMAIL_ADDRESS_1>"
    assert request.summary.counts == {Stage.INPUT: {"EMAIL_ADDRESS": 1}}

    reply = answer("I will write to <EMAIL_ADDRESS_1> today.")
    response = await pii.inspect_response(orjson.dumps(reply), reply, request)
    restored = orjson.loads(response.body)["choices"][0]["message"]["content"]
    assert restored == f"I will write to {EMAIL} today."


async def test_a_blocked_entity_refuses_the_request(start_filter: StartFilter) -> None:
    """A card number, set to block, refuses the request without naming the number."""
    pii = await guard(start_filter)
    doc = chat(f"charge {CARD} please")
    request = await pii.inspect_request(orjson.dumps(doc), json_payload(CHAT_COMPLETIONS, doc))
    assert "CREDIT_CARD" in request.verdict.blocked
    assert CARD not in repr(request.verdict)


async def test_analyzer_down_with_on_error_allow_passes_unchecked(
    start_filter: StartFilter, analyzer: Analyzer
) -> None:
    """With on_error allow, a dead analyzer lets the text through and the summary says so."""
    pii = await guard(start_filter, on_error="allow")
    await analyzer.server.close()
    doc = chat(f"mail me at {EMAIL}")
    raw = orjson.dumps(doc)
    request = await pii.inspect_request(raw, json_payload(CHAT_COMPLETIONS, doc))
    assert request.verdict.allowed
    assert request.body == raw
    assert request.summary.unchecked == ["presidio"]


async def test_analyzer_down_with_on_error_block_is_unavailable(
    start_filter: StartFilter, analyzer: Analyzer
) -> None:
    """With on_error block, a stalled analyzer makes the request unavailable (a 503)."""
    pii = await guard(start_filter, on_error="block", timeout=0.1)
    analyzer.state.stall = 1.0
    doc = chat(f"mail me at {EMAIL}")
    request = await pii.inspect_request(orjson.dumps(doc), json_payload(CHAT_COMPLETIONS, doc))
    assert request.verdict.unavailable == "presidio"
    assert not request.verdict.allowed
