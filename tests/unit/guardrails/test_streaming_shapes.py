"""Streams in every answer format: chat channels, Responses events, and what is refused."""

from __future__ import annotations

from typing import Any

import orjson

from gatewayd.guardrails import endpoints
from gatewayd.guardrails.payload import json_payload
from gatewayd.guardrails.pipeline import Guard, RequestResult
from gatewayd.guardrails.streaming import StreamGuard
from gatewayd.guardrails.types import Stage

from .fakes import chat_payload, restoring_guard, sse


async def _chat_request(guard: Guard, content: str = "I am a@x.io") -> RequestResult:
    doc = {"messages": [{"role": "user", "content": content}]}
    return await guard.inspect_request(orjson.dumps(doc), chat_payload(doc))


async def _responses_request(guard: Guard, content: str = "I am a@x.io") -> RequestResult:
    endpoint = endpoints.find("POST", "/v1/responses")
    assert endpoint is not None
    doc = {"model": "m", "input": content, "stream": True}
    return await guard.inspect_request(orjson.dumps(doc), json_payload(endpoint, doc))


async def _run(stream: StreamGuard, pieces: list[bytes]) -> bytes:
    out = [await stream.feed(piece) for piece in pieces]
    out.append(await stream.finish())
    return b"".join(out)


def events(out: bytes) -> list[bytes]:
    """The data of every event but `[DONE]`, whatever other lines (`event:`) it has."""
    found = []
    for block in out.split(b"\n\n"):
        for line in block.split(b"\n"):
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                found.append(line[6:])
    return found


def _delta(**delta: Any) -> dict[str, Any]:
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
    }


def _joined(out: bytes, *path: str) -> str:
    text = ""
    for data in events(out):
        doc = orjson.loads(data)
        for choice in doc.get("choices", []):
            node: Any = choice["delta"]
            for step in path:
                node = node.get(step) if isinstance(node, dict) else None
            text += node or ""
    return text


async def test_refusal_and_transcript_channels_are_restored_and_filtered() -> None:
    """`delta.refusal` and `delta.audio.transcript` stream like content: split placeholders
    are restored, new addresses redacted."""
    guard = restoring_guard()
    request = await _chat_request(guard)
    pieces = [
        sse(_delta(refusal="Not <EMAIL_")),
        sse(_delta(refusal="ADDRESS_1>, ask b@y.io")),
        sse(_delta(audio={"id": "a", "transcript": "hi <EMAIL_ADDRESS_1> c@z.io"})),
        sse("[DONE]"),
    ]
    out = await _run(guard.stream(request), pieces)
    assert _joined(out, "refusal") == "Not a@x.io, ask <EMAIL_ADDRESS_2>"
    assert _joined(out, "audio", "transcript") == "hi a@x.io <EMAIL_ADDRESS_3>"
    assert b"b@y.io" not in out
    assert b"c@z.io" not in out


async def test_streamed_tool_arguments_get_escaped_values() -> None:
    """A value restored into streamed tool-call arguments is escaped for JSON."""
    guard = restoring_guard(output=())
    request = await _chat_request(guard, "hi")
    evil = 'O"Brien\\'
    placeholder = request.redactions.placeholder("PERSON", evil)
    arguments = '{"to": "' + placeholder + '"}'
    calls = [
        {"index": 0, "id": "t", "type": "function", "function": {"name": "f", "arguments": ""}}
    ]
    pieces = [
        sse(_delta(tool_calls=calls)),
        sse(_delta(tool_calls=[{"index": 0, "function": {"arguments": arguments[:12]}}])),
        sse(_delta(tool_calls=[{"index": 0, "function": {"arguments": arguments[12:]}}])),
        sse("[DONE]"),
    ]
    out = await _run(guard.stream(request), pieces)
    streamed = ""
    for data in events(out):
        for choice in orjson.loads(data).get("choices", []):
            for call in choice["delta"].get("tool_calls", []):
                streamed += call["function"].get("arguments", "")
    assert orjson.loads(streamed) == {"to": evil}


async def test_chunks_the_policy_cannot_read_end_the_stream() -> None:
    """A chunk with an unknown field, or data that is not JSON, ends the stream with an
    unsupported_response error event instead of passing unread."""
    for bad in (
        sse({**_delta(content="x"), "surprise": "a@x.io"}),
        b"data: {not json a@x.io\n\n",
        sse(
            {
                "choices": [
                    {
                        "index": 0,
                        "delta": {"content": "x"},
                        "logprobs": {"content": [{"token": "a"}]},
                    }
                ]
            }
        ),
    ):
        guard = restoring_guard()
        request = await _chat_request(guard)
        out = await _run(guard.stream(request), [sse(_delta(content="fine ")), bad, sse("[DONE]")])
        last = orjson.loads(events(out)[-1])
        assert last["error"]["code"] == "unsupported_response"
        assert b"a@x.io" not in out
        assert b"[DONE]" not in out
        assert len(events(out)) == 2


async def test_unknown_allow_passes_unreadable_chunks_and_marks_them() -> None:
    """With unknown: allow an unreadable chunk passes as it came and the audit says so."""
    guard = restoring_guard(unknown="allow")
    request = await _chat_request(guard)
    bad = sse({**_delta(content="x"), "surprise": 1})
    out = await _run(guard.stream(request), [bad, sse("[DONE]")])
    assert bad in out
    assert request.summary.unchecked == ["unknown"]


def _ev(kind: str, **fields: Any) -> bytes:
    doc = {"type": kind, "sequence_number": 1, **fields}
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(doc) + b"\n\n"


_TEXT_AT = {"item_id": "msg_1", "output_index": 0, "content_index": 0}


def _response(text: str) -> dict[str, Any]:
    return {
        "id": "resp_1",
        "object": "response",
        "status": "completed",
        "output": [
            {
                "type": "message",
                "id": "msg_1",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
    }


def _data(out: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(data) for data in events(out)]


async def test_responses_stream_text_is_restored_filtered_and_repeated_consistently() -> None:
    """Responses `output_text` deltas restore a split placeholder and redact a new address;
    held text goes out in a delta before `.done`; `.done` and the final response carry the
    same text, counted once."""
    guard = restoring_guard()
    request = await _responses_request(guard)
    answer = "Hi <EMAIL_ADDRESS_1>, write b@y.io"
    pieces = [
        _ev(
            "response.created",
            response={"id": "resp_1", "object": "response", "status": "in_progress", "output": []},
        ),
        _ev("response.output_text.delta", delta="Hi <EMAIL_", logprobs=[], **_TEXT_AT),
        _ev("response.output_text.delta", delta="ADDRESS_1>, write b@y", logprobs=[], **_TEXT_AT),
        _ev("response.output_text.delta", delta=".io", logprobs=[], **_TEXT_AT),
        _ev("response.output_text.done", text=answer, logprobs=[], **_TEXT_AT),
        _ev("response.completed", response=_response(answer)),
    ]
    out = await _run(guard.stream(request), pieces)
    docs = _data(out)
    deltas = "".join(d["delta"] for d in docs if d["type"] == "response.output_text.delta")
    expected = "Hi a@x.io, write <EMAIL_ADDRESS_2>"
    assert deltas == expected
    [done] = [d for d in docs if d["type"] == "response.output_text.done"]
    assert done["text"] == expected
    [completed] = [d for d in docs if d["type"] == "response.completed"]
    assert completed["response"]["output"][0]["content"][0]["text"] == expected
    assert b"b@y.io" not in out
    assert request.summary.counts[Stage.OUTPUT] == {"EMAIL_ADDRESS": 1}
    # The held text's delta comes right before `.done`, named as Responses events are.
    kinds = [d["type"] for d in docs]
    assert kinds.index("response.output_text.done") - 1 == len(kinds) - 1 - kinds[::-1].index(
        "response.output_text.delta"
    )
    assert b"event: response.output_text.delta\ndata: " in out


async def test_responses_function_call_arguments_stream_escaped() -> None:
    """`response.function_call_arguments.delta` restores values escaped for JSON."""
    guard = restoring_guard(output=())
    request = await _responses_request(guard, "hi")
    evil = 'O"Brien\\'
    placeholder = request.redactions.placeholder("PERSON", evil)
    arguments = '{"to": "' + placeholder + '"}'
    at = {"item_id": "fc_1", "output_index": 0}
    pieces = [
        _ev("response.function_call_arguments.delta", delta=arguments[:13], **at),
        _ev("response.function_call_arguments.delta", delta=arguments[13:], **at),
        _ev("response.function_call_arguments.done", arguments=arguments, **at),
    ]
    docs = _data(await _run(guard.stream(request), pieces))
    streamed = "".join(d["delta"] for d in docs if d["type"].endswith(".delta"))
    assert orjson.loads(streamed) == {"to": evil}
    [done] = [d for d in docs if d["type"].endswith(".done")]
    assert orjson.loads(done["arguments"]) == {"to": evil}


async def test_responses_events_of_unknown_types_end_the_stream() -> None:
    """A Responses event type no shape describes (a tool's results) is refused."""
    guard = restoring_guard()
    request = await _responses_request(guard)
    pieces = [
        _ev("response.output_text.delta", delta="ok ", logprobs=[], **_TEXT_AT),
        _ev("response.file_search_call.results", results=[{"text": "a@x.io"}]),
    ]
    out = await _run(guard.stream(request), pieces)
    assert _data(out)[-1]["error"]["code"] == "unsupported_response"
    assert b"a@x.io" not in out


async def test_strings_of_a_chunk_outside_its_channels_are_read_whole() -> None:
    """A tool call's name beside an empty content delta is restored and filtered whole."""
    guard = restoring_guard()
    request = await _chat_request(guard)
    call = {"index": 0, "id": "t", "type": "function", "function": {"name": "<EMAIL_ADDRESS_1>"}}
    out = await _run(
        guard.stream(request), [sse(_delta(content="", tool_calls=[call])), sse("[DONE]")]
    )
    [chunk] = [orjson.loads(data) for data in events(out)]
    assert chunk["choices"][0]["delta"]["tool_calls"][0]["function"]["name"] == "a@x.io"
