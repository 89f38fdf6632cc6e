"""Endpoint shapes: every string the model reads is found, everything unknown is named."""

from __future__ import annotations

from typing import Any

import pytest

from gatewayd.guardrails import endpoints
from gatewayd.guardrails.endpoints import (
    CHAT_ANSWER,
    CHAT_REQUEST,
    COMPLETIONS_REQUEST,
    EMBEDDINGS_REQUEST,
    RESPONSE,
    RESPONSES_REQUEST,
    TRANSCRIPTION_ANSWER,
)
from gatewayd.guardrails.shapes import JoinedSlot, KeySlot, Node, walk

SECRET = "dana@example.com"


def _texts(shape: Node, doc: dict[str, Any]) -> dict[str, str]:
    walked = walk(shape, doc)
    assert walked.unknown == [], walked.unknown
    return {slot.location: slot.text for slot in walked.slots}


def _reads(shape: Node, doc: dict[str, Any]) -> bool:
    """Does some slot of the walk hold the secret?"""
    walked = walk(shape, doc)
    assert walked.unknown == [], walked.unknown
    return any(SECRET in slot.text for slot in walked.slots)


def _chat(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}


_FUNCTION_TOOL = {
    "type": "function",
    "function": {
        "name": "send",
        "description": f"sends mail as {SECRET}",
        "parameters": {
            "type": "object",
            "properties": {"to": {"type": "string", "enum": [SECRET]}},
        },
    },
}


@pytest.mark.parametrize(
    ("shape", "doc"),
    [
        (CHAT_REQUEST, _chat(tools=[_FUNCTION_TOOL])),
        (
            CHAT_REQUEST,
            _chat(
                tools=[
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {"properties": {"x": {"description": SECRET}}},
                        },
                    }
                ]
            ),
        ),
        (CHAT_REQUEST, _chat(functions=[{"name": "f", "description": SECRET}])),
        (CHAT_REQUEST, {"messages": [{"role": "user", "name": SECRET, "content": "x"}]}),
        (CHAT_REQUEST, {"messages": [{"role": "assistant", "refusal": SECRET}]}),
        (
            CHAT_REQUEST,
            {
                "messages": [
                    {"role": "assistant", "content": [{"type": "refusal", "refusal": SECRET}]}
                ]
            },
        ),
        (
            CHAT_REQUEST,
            _chat(
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "r", "schema": {"description": SECRET}},
                }
            ),
        ),
        (CHAT_REQUEST, _chat(prediction={"type": "content", "content": SECRET})),
        (
            CHAT_REQUEST,
            _chat(prediction={"type": "content", "content": [{"type": "text", "text": SECRET}]}),
        ),
        (CHAT_REQUEST, _chat(user=SECRET)),
        (CHAT_REQUEST, _chat(metadata={"owner": SECRET})),
        (CHAT_REQUEST, _chat(stop=[SECRET])),
        (
            CHAT_REQUEST,
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "id": "c",
                                "type": "function",
                                "function": {"name": "f", "arguments": f'{{"to": "{SECRET}"}}'},
                            }
                        ],
                    },
                    {"role": "tool", "tool_call_id": "c", "content": f"sent to {SECRET}"},
                ]
            },
        ),
        (COMPLETIONS_REQUEST, {"model": "m", "prompt": "p", "suffix": SECRET}),
        (
            RESPONSES_REQUEST,
            {"input": [{"type": "function_call_output", "call_id": "c", "output": SECRET}]},
        ),
        (
            RESPONSES_REQUEST,
            {
                "input": [
                    {
                        "type": "function_call_output",
                        "call_id": "c",
                        "output": [{"type": "input_text", "text": SECRET}],
                    }
                ]
            },
        ),
        (
            RESPONSES_REQUEST,
            {
                "input": [
                    {"type": "function_call", "call_id": "c", "name": "f", "arguments": SECRET}
                ]
            },
        ),
        (RESPONSES_REQUEST, {"input": "x", "tools": [{"type": "function", "description": SECRET}]}),
        (RESPONSES_REQUEST, {"input": "x", "instructions": SECRET}),
        (
            RESPONSES_REQUEST,
            {
                "input": [
                    {
                        "type": "reasoning",
                        "id": "r",
                        "summary": [{"type": "summary_text", "text": SECRET}],
                    }
                ]
            },
        ),
        (RESPONSES_REQUEST, {"input": "x", "prompt": {"id": "p", "variables": {"who": SECRET}}}),
        (
            RESPONSES_REQUEST,
            {
                "input": "x",
                "text": {"format": {"type": "json_schema", "schema": {"title": SECRET}}},
            },
        ),
        (EMBEDDINGS_REQUEST, {"model": "m", "input": [SECRET]}),
    ],
)
def test_every_field_the_model_reads_is_scanned(shape: Node, doc: dict[str, Any]) -> None:
    """Tool descriptions, schemas, enums, names, refusals, predictions, suffixes, tool
    results and calls: each reaches a filter."""
    assert _reads(shape, doc)


def test_schema_property_names_are_read_and_renamed_in_place() -> None:
    """A JSON-schema property name is text the model reads; rewriting it keeps key order."""
    doc = _chat(
        tools=[
            {
                "type": "function",
                "function": {
                    "name": "f",
                    "parameters": {"properties": {"a": 1, SECRET: 2, "z": 3}},
                },
            }
        ]
    )
    walked = walk(CHAT_REQUEST, doc)
    [key] = [slot for slot in walked.slots if isinstance(slot, KeySlot) and slot.text == SECRET]
    assert key.location == "tools[0].function.parameters.properties.(key)"
    key.write("<EMAIL_ADDRESS_1>")
    properties = doc["tools"][0]["function"]["parameters"]["properties"]
    assert list(properties) == ["a", "<EMAIL_ADDRESS_1>", "z"]


def test_adjacent_text_parts_are_one_text() -> None:
    """A value split over two text parts is scanned whole; an image part breaks the run."""
    doc = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "dana@exa"},
                    {"type": "text", "text": "mple.com"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "text", "text": "after"},
                ],
            }
        ]
    }
    walked = walk(CHAT_REQUEST, doc)
    joined = walked.slots[0]
    assert isinstance(joined, JoinedSlot)
    assert joined.text == SECRET
    assert joined.location == "messages[0].content[0].text"
    joined.write("<EMAIL_ADDRESS_1>")
    parts = doc["messages"][0]["content"]
    assert [p.get("text") for p in parts] == ["<EMAIL_ADDRESS_1>", "", None, "after"]
    assert [slot.location for slot in walked.slots[1:]] == ["messages[0].content[3].text"]


def test_media_is_not_read_but_links_are() -> None:
    """Base64 images and audio are media; an http image URL is text that goes upstream."""
    doc = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": f"https://x.io/?u={SECRET}"}},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,QUJD"}},
                    {"type": "input_audio", "input_audio": {"data": "QUJD", "format": "wav"}},
                ],
            }
        ]
    }
    assert list(_texts(CHAT_REQUEST, doc)) == ["messages[0].content[0].image_url.url"]


def test_token_ids_carry_no_text() -> None:
    """Prompts and inputs of token ids, flat or nested, yield nothing and are known."""
    assert _texts(COMPLETIONS_REQUEST, {"prompt": [1, 2, 3]}) == {}
    assert _texts(EMBEDDINGS_REQUEST, {"input": [[1, 2], [3]]}) == {}
    assert _texts(COMPLETIONS_REQUEST, {"prompt": ["a", "b"]}) == {
        "prompt[0]": "a",
        "prompt[1]": "b",
    }


@pytest.mark.parametrize(
    ("doc", "unknown"),
    [
        (_chat(top_secret_field="x"), ["top_secret_field"]),
        (_chat(**{SECRET: 1}), ["(field)"]),
        ({"messages": [{"role": "user", "content": "x", "extra": SECRET}]}, ["messages[0].extra"]),
        ({"messages": [{"role": "wizard", "content": SECRET}]}, ["messages[0].role"]),
        ({"messages": [{"role": "user", "content": {"text": SECRET}}]}, ["messages[0].content"]),
        (
            {"messages": [{"role": "user", "content": [{"type": "video", "v": SECRET}]}]},
            ["messages[0].content[0].type"],
        ),
        ({"model": f"gpt {SECRET}", "messages": []}, ["model"]),
        (_chat(temperature="hot"), ["temperature"]),
        (_chat(messages="hello"), ["messages"]),
        (_chat(stream_options={"include_usage": True, "x": 1}), ["stream_options.x"]),
    ],
)
def test_unknown_fields_odd_values_and_unknown_types_are_named(
    doc: dict[str, Any], unknown: list[str]
) -> None:
    """Keys no shape lists, values of the wrong type, unknown roles and part types, and
    ids that look like text are unknown; a key that could be a value is not quoted."""
    walked = walk(CHAT_REQUEST, doc)
    assert walked.unknown == unknown
    assert all(SECRET not in where for where in walked.unknown)


def test_answers_read_refusals_transcripts_and_responses_calls() -> None:
    """Whole answers: message refusal, audio transcript, Responses function-call arguments
    and output text are all read; logprobs (the answer token by token) are unknown."""
    chat = {
        "id": "c",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "logprobs": None,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "refusal": "r",
                    "audio": {"id": "a", "data": "QUJD", "transcript": "t", "expires_at": 1},
                },
            }
        ],
        "usage": {"prompt_tokens": 1},
    }
    texts = _texts(CHAT_ANSWER, chat)
    assert texts["choices[0].message.refusal"] == "r"
    assert texts["choices[0].message.audio.transcript"] == "t"
    chat["choices"][0]["logprobs"] = {"content": [{"token": "d", "logprob": -0.1}]}
    assert walk(CHAT_ANSWER, chat).unknown == ["choices[0].logprobs"]

    response = {
        "id": "r",
        "object": "response",
        "output": [
            {"type": "function_call", "id": "f", "call_id": "c", "name": "n", "arguments": "{}"},
            {
                "type": "message",
                "id": "m",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": "o", "annotations": []}],
            },
        ],
    }
    walked = walk(RESPONSE, response)
    assert walked.unknown == []
    arguments = next(s for s in walked.slots if s.location == "output[0].arguments")
    assert arguments.json
    assert any(s.location == "output[1].content[0].text" for s in walked.slots)
    assert _texts(TRANSCRIPTION_ANSWER, {"text": "heard"}) == {"text": "heard"}


@pytest.mark.parametrize(
    ("method", "path", "name"),
    [
        ("POST", "/v1/chat/completions", "chat.completions"),
        ("POST", "/openai/deployments/gpt/chat/completions", "chat.completions"),
        ("POST", "/v1/completions", "completions"),
        ("GET", "/v1/responses/resp_1", "responses.get"),
        ("GET", "/v1/responses/resp_1/input_items", "responses.input_items"),
        ("POST", "/v1/audio/transcriptions", "audio.transcriptions"),
        ("GET", "/v1/files/file-1/content", "files.content"),
        ("GET", "/v1/models/meta-llama/Llama-3-8B", "models.get"),
        ("POST", "/v1/files", "files.create"),
    ],
)
def test_endpoints_are_found_by_method_and_path_end(method: str, path: str, name: str) -> None:
    """The endpoint is named by the end of the upstream path, whatever prefix precedes it."""
    endpoint = endpoints.find(method, path)
    assert endpoint is not None
    assert endpoint.name == name


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/assistants"),
        ("POST", "/v1/threads/t/messages"),
        ("PUT", "/v1/chat/completions"),
        ("GET", "/v1/chat/completions"),
        ("POST", "/v1/chat/completions/x/y"),
        ("POST", "/v1/vector_stores"),
    ],
)
def test_other_endpoints_are_unknown(method: str, path: str) -> None:
    """Endpoints without a shape, and known paths with another method, are unknown."""
    assert endpoints.find(method, path) is None
