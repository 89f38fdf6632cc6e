"""A guard refuses what it cannot read, and restoring never changes what the client meant."""

from __future__ import annotations

from typing import Any

import orjson

from gatewayd.config.schema import Action
from gatewayd.guardrails import endpoints
from gatewayd.guardrails.payload import json_payload
from gatewayd.guardrails.pipeline import Guard, RequestResult
from gatewayd.guardrails.types import Stage
from gatewayd.observability.metrics import REGISTRY

from .fakes import chat_payload, restoring_guard


async def _request(guard: Guard, doc: dict[str, Any]) -> RequestResult:
    return await guard.inspect_request(orjson.dumps(doc), chat_payload(doc))


def _answer(message: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "c",
        "object": "chat.completion",
        "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
    }


async def test_unknown_request_fields_are_refused_without_quoting_them() -> None:
    """A field no shape lists refuses the request (400 unsupported_request) by default."""
    doc = {"messages": [{"role": "user", "content": "hi"}], "sneaky": "a@x.io"}
    result = await _request(restoring_guard(), doc)
    error = result.verdict.as_error("p", "request")
    assert error is not None
    assert (error.status, error.code) == (400, "unsupported_request")
    assert error.message == "policy 'p' cannot read the request: sneaky"
    # The audit records the refusal as what it is.
    assert result.summary.action is Action.BLOCK
    assert "a@x.io" not in error.message


async def test_unknown_allow_passes_unknown_fields_and_audits_them_unchecked() -> None:
    """With unknown: allow the request goes on, the known texts still redacted, and the
    summary records that something passed unread."""
    doc = {"messages": [{"role": "user", "content": "mail a@x.io"}], "sneaky": 1}
    result = await _request(restoring_guard(unknown="allow"), doc)
    assert result.verdict.allowed
    assert b"a@x.io" not in result.body
    assert result.summary.unchecked == ["unknown"]


def _unknown_count(outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "gatewayd_guardrail_unknown_total", {"policy": "p", "stage": "input", "outcome": outcome}
    )
    return value or 0.0


async def test_unknown_endpoints_follow_the_policy() -> None:
    """An endpoint without a shape is refused, or passed unread and audited, per `unknown`;
    each way is counted."""
    refused_before, passed_before = _unknown_count("refused"), _unknown_count("passed")
    refused = restoring_guard().unknown_endpoint(b"{}")
    error = refused.verdict.as_error("p", "request")
    assert error is not None
    assert error.code == "unsupported_request"
    passed = restoring_guard(unknown="allow").unknown_endpoint(b"{}")
    assert passed.verdict.allowed
    assert passed.summary.unchecked == ["unknown"]
    assert _unknown_count("refused") == refused_before + 1
    assert _unknown_count("passed") == passed_before + 1


async def test_a_placeholder_the_client_wrote_is_never_restored_into_a_value() -> None:
    """A prompt holding the literal `<EMAIL_ADDRESS_1>` beside a real address: the answer
    echoing both gets the real address back in one place only."""
    guard = restoring_guard(output=())
    doc = {"messages": [{"role": "user", "content": "Template <EMAIL_ADDRESS_1>; mine: a@x.io"}]}
    request = await _request(guard, doc)
    assert b"Template <EMAIL_ADDRESS_1>; mine: <EMAIL_ADDRESS_2>" in request.body
    answer = _answer({"role": "assistant", "content": "<EMAIL_ADDRESS_1> and <EMAIL_ADDRESS_2>"})
    result = await guard.inspect_response(orjson.dumps(answer), answer, request)
    content = orjson.loads(result.body)["choices"][0]["message"]["content"]
    assert content == "<EMAIL_ADDRESS_1> and a@x.io"


async def test_a_value_split_across_content_parts_is_redacted() -> None:
    """Two text parts the model reads as one text cannot carry a value past the filters."""
    doc = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "mail dana@exa"},
                    {"type": "text", "text": "mple.com"},
                ],
            }
        ]
    }
    request = await _request(restoring_guard(), doc)
    assert b"dana" not in request.body
    parts = orjson.loads(request.body)["messages"][0]["content"]
    assert "".join(p["text"] for p in parts) == "mail <EMAIL_ADDRESS_1>"


async def test_a_new_value_glued_to_a_restored_one_is_still_found() -> None:
    """`<EMAIL_ADDRESS_1>+x@y.org` in an answer: the placeholder is restored and the new
    address written against it is redacted and counted."""
    guard = restoring_guard()
    request = await _request(guard, {"messages": [{"role": "user", "content": "I am a@x.io"}]})
    answer = _answer({"role": "assistant", "content": "<EMAIL_ADDRESS_1>+x@y.org"})
    result = await guard.inspect_response(orjson.dumps(answer), answer, request)
    content = orjson.loads(result.body)["choices"][0]["message"]["content"]
    assert content.startswith("a@x.io")
    assert "x@y.org" not in content
    assert content.endswith("<EMAIL_ADDRESS_2>")
    assert request.summary.counts[Stage.OUTPUT] == {"EMAIL_ADDRESS": 1}


async def test_restored_tool_arguments_stay_the_json_the_model_wrote() -> None:
    """A restored value with quotes and backslashes is escaped inside tool-call arguments:
    the client's JSON parser sees the value, not injected keys."""
    guard = restoring_guard(output=())
    request = await _request(guard, {"messages": [{"role": "user", "content": "hi"}]})
    # As a name filter (Presidio) could have redacted it.
    evil = 'O"Brien", "admin": true, "x": "\\'
    placeholder = request.redactions.placeholder("PERSON", evil)
    arguments = orjson.dumps({"to": placeholder}).decode()
    answer = _answer(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "t",
                    "type": "function",
                    "function": {"name": "send", "arguments": arguments},
                }
            ],
        }
    )
    result = await guard.inspect_response(orjson.dumps(answer), answer, request)
    call = orjson.loads(result.body)["choices"][0]["message"]["tool_calls"][0]
    assert orjson.loads(call["function"]["arguments"]) == {"to": evil}


async def test_answers_with_fields_the_policy_cannot_read_are_refused() -> None:
    """Logprobs or an unknown field in an answer refuse it: 502 unsupported_response,
    marked not to be retried (the completion was billed already)."""
    guard = restoring_guard()
    request = await _request(guard, {"messages": [{"role": "user", "content": "hi"}]})
    answer = _answer({"role": "assistant", "content": "a@x.io"})
    answer["choices"][0]["logprobs"] = {"content": [{"token": "a@x.io", "logprob": 0}]}
    result = await guard.inspect_response(orjson.dumps(answer), answer, request)
    error = result.verdict.as_error("p", "response")
    assert error is not None
    assert (error.status, error.code) == (502, "unsupported_response")
    assert error.headers["x-should-retry"] == "false"


async def test_refusals_and_transcripts_in_answers_are_filtered_and_restored() -> None:
    """`message.refusal` and `message.audio.transcript` get placeholders restored and new
    values redacted like content does."""
    guard = restoring_guard()
    request = await _request(guard, {"messages": [{"role": "user", "content": "I am a@x.io"}]})
    answer = _answer(
        {
            "role": "assistant",
            "content": None,
            "refusal": "Not for <EMAIL_ADDRESS_1>, ask b@y.io",
            "audio": {
                "id": "a",
                "data": "QUJD",
                "expires_at": 1,
                "transcript": "hi <EMAIL_ADDRESS_1> c@z.io",
            },
        }
    )
    result = await guard.inspect_response(orjson.dumps(answer), answer, request)
    message = orjson.loads(result.body)["choices"][0]["message"]
    assert message["refusal"] == "Not for a@x.io, ask <EMAIL_ADDRESS_2>"
    assert message["audio"]["transcript"] == "hi a@x.io <EMAIL_ADDRESS_3>"


async def test_responses_answers_restore_calls_and_echoed_instructions() -> None:
    """A Responses answer: function-call arguments and the echoed instructions are restored."""
    guard = restoring_guard(output=())
    endpoint = endpoints.find("POST", "/v1/responses")
    assert endpoint is not None
    doc = {"model": "m", "instructions": "user is a@x.io", "input": "mail me"}
    request = await guard.inspect_request(orjson.dumps(doc), json_payload(endpoint, doc))
    assert b"a@x.io" not in request.body
    answer = {
        "id": "r",
        "object": "response",
        "instructions": "user is <EMAIL_ADDRESS_1>",
        "output": [
            {
                "type": "function_call",
                "id": "f",
                "call_id": "c",
                "name": "mail",
                "arguments": '{"to":"<EMAIL_ADDRESS_1>"}',
            }
        ],
    }
    result = await guard.inspect_response(orjson.dumps(answer), answer, request)
    body = orjson.loads(result.body)
    assert body["instructions"] == "user is a@x.io"
    assert orjson.loads(body["output"][0]["arguments"]) == {"to": "a@x.io"}


async def test_answers_without_model_text_are_not_read() -> None:
    """Embeddings and audio speech answers carry no model text: the guard leaves them be."""
    guard = restoring_guard()
    for path, doc in (
        ("/v1/embeddings", {"model": "m", "input": "a@x.io"}),
        ("/v1/audio/speech", {"model": "m", "input": "a@x.io", "voice": "alloy"}),
    ):
        endpoint = endpoints.find("POST", path)
        assert endpoint is not None
        request = await guard.inspect_request(orjson.dumps(doc), json_payload(endpoint, doc))
        assert b"a@x.io" not in request.body
        assert not guard.wants_answer(request)
