"""The streaming guard: placeholders and values split anywhere, tokens kept flowing, blocks."""

from __future__ import annotations

import re
from types import MappingProxyType
from typing import Any

import orjson
import pytest

from gatewayd.config.schema import Action, Mode, PolicyConfig
from gatewayd.guardrails import endpoints
from gatewayd.guardrails.buffers import LOOKAHEAD
from gatewayd.guardrails.payload import json_payload
from gatewayd.guardrails.pipeline import Guard, RequestResult
from gatewayd.guardrails.streaming import StreamGuard
from gatewayd.guardrails.types import Filter, Stage, Verdict
from gatewayd.observability.metrics import REGISTRY

from .fakes import (
    EMAIL,
    FakeRemote,
    chat_chunk,
    chat_payload,
    email_filter,
    events,
    phone_filter,
    sse,
    streamed_text,
)

EMAIL_TAIL = re.compile(r"[\w.+@-]*\Z")


def _guard(
    mode: Mode = Mode.REDACT,
    *,
    output: tuple[str, ...] = (),
    restore: bool = False,
    entities: dict[str, Action] | None = None,
    extra: tuple[Filter, ...] = (),
    on_error: str = "block",
) -> Guard:
    policy = PolicyConfig(
        name="p",
        mode=mode,
        input=("email", "phone"),
        output=output,
        restore=restore,
        on_error="allow" if on_error == "allow" else "block",
        entities=MappingProxyType(dict(entities or {})),
    )
    filters: dict[str, Filter] = {"email": email_filter(), "phone": phone_filter()}
    filters.update({f.name: f for f in extra})
    return Guard(policy, filters)


async def _request(guard: Guard, content: str = "hi") -> RequestResult:
    doc = {"messages": [{"role": "user", "content": content}]}
    result = await guard.inspect_request(orjson.dumps(doc), chat_payload(doc))
    assert result.verdict.allowed
    return result


async def _completion_request(guard: Guard, prompt: str) -> RequestResult:
    doc = {"model": "m", "prompt": prompt}
    endpoint = endpoints.find("POST", "/v1/completions")
    assert endpoint is not None
    result = await guard.inspect_request(orjson.dumps(doc), json_payload(endpoint, doc))
    assert result.verdict.allowed
    return result


async def _feed_all(stream: StreamGuard, chunks: list[bytes]) -> list[bytes]:
    """What the client gets for each chunk fed, then for finish()."""
    out = [await stream.feed(chunk) for chunk in chunks]
    out.append(await stream.finish())
    return out


def _redact_emails(text: str) -> str:
    return re.sub(EMAIL, "<EMAIL_ADDRESS_1>", text)


END = sse(chat_chunk(finish="stop"), "[DONE]")


async def test_placeholder_split_at_every_position_is_restored() -> None:
    """However a placeholder is split between two events, the client reads the value,
    and everything before the partial placeholder goes out with the first event."""
    guard = _guard(restore=True)
    request = await _request(guard, "my address is a@x.io")
    answer = "Sure, I mailed <EMAIL_ADDRESS_1> today."
    restored = "Sure, I mailed a@x.io today."
    start, end = answer.index("<"), answer.index(">") + 1
    for cut in range(1, len(answer)):
        first_event = sse(chat_chunk(answer[:cut]))
        out = await _feed_all(
            guard.stream(request), [first_event, sse(chat_chunk(answer[cut:])), END]
        )
        assert streamed_text(b"".join(out)) == restored, cut
        if cut <= start:
            assert out[0] == first_event, cut  # untouched events keep their bytes
        elif cut < end:
            assert streamed_text(out[0]) == answer[:start], cut
        else:
            assert streamed_text(out[0]) == restored[: cut - (end - start) + len("a@x.io")], cut
        assert out[-1] == b"", cut


async def test_pii_value_split_at_every_position_is_redacted() -> None:
    """An e-mail address split anywhere between two events reaches the client redacted,
    and each event releases all text that could not be part of an address."""
    guard = _guard(output=("email",))
    request = await _request(guard)
    answer = "Reach me at bob.smith@example.com or later."
    for cut in range(1, len(answer)):
        prefix = answer[:cut]
        held = len(EMAIL_TAIL.search(prefix).group())  # type: ignore[union-attr]
        out = await _feed_all(
            guard.stream(request), [sse(chat_chunk(prefix)), sse(chat_chunk(answer[cut:])), END]
        )
        assert streamed_text(b"".join(out)) == _redact_emails(answer), cut
        released = prefix[: len(prefix) - held]
        complete = re.search(EMAIL, released)
        if complete and complete.end() > len(prefix) - LOOKAHEAD:
            released = prefix[: complete.start()]  # a look-ahead could still undo it
        assert streamed_text(out[0]) == _redact_emails(released), cut
        assert b"bob.smith" not in b"".join(out), cut


async def test_one_character_per_event() -> None:
    """With every character its own event, placeholders restore and new values redact."""
    guard = _guard(restore=True, output=("email",))
    request = await _request(guard, "I am a@x.io")
    answer = "Hi <EMAIL_ADDRESS_1>! Copy c@y.io, ok?"
    chunks = [sse(chat_chunk(ch)) for ch in answer] + [END]
    out = await _feed_all(guard.stream(request), chunks)
    assert streamed_text(b"".join(out)) == "Hi a@x.io! Copy <EMAIL_ADDRESS_2>, ok?"
    # Text no address can grow from goes out in the event that brought it.
    assert streamed_text(out[0]) == ""  # "H" may start an address
    assert streamed_text(out[2]) == "Hi "
    assert request.summary.counts[Stage.OUTPUT] == {"EMAIL_ADDRESS": 1}


def _full_stream(answer_pieces: list[str], *, eol: bytes = b"\n") -> bytes:
    docs: list[dict[str, Any] | str] = [chat_chunk("", role="assistant")]
    docs += [chat_chunk(piece) for piece in answer_pieces]
    docs += [chat_chunk(finish="stop")]
    usage = {"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 3, "total_tokens": 9}}
    docs += [usage, "[DONE]"]
    return (b": ping\n\n" + sse(*docs)).replace(b"\n", eol)


@pytest.mark.parametrize("output", [(), ("email",)])
async def test_sse_bytes_split_at_every_byte_position(output: tuple[str, ...]) -> None:
    """Whatever byte the upstream's TCP pieces split at, the client gets the same bytes."""
    guard = _guard(restore=True, output=output)
    pieces = ["Hi <EMAIL_", "ADDRESS_1>, mail", " c@y.", "io now", "."]
    expected = "Hi a@x.io, mail <EMAIL_ADDRESS_2> now." if output else "Hi a@x.io, mail c@y.io now."
    for eol in (b"\n", b"\r\n"):
        stream = _full_stream(pieces, eol=eol)
        # One request per answer: the output stage adds to its redactions.
        request = await _request(guard, "I am a@x.io")
        reference = b"".join(await _feed_all(guard.stream(request), [stream]))
        assert streamed_text(reference.replace(b"\r\n", b"\n")) == expected
        for cut in range(len(stream) + 1):
            request = await _request(guard, "I am a@x.io")
            out = await _feed_all(guard.stream(request), [stream[:cut], stream[cut:]])
            assert b"".join(out) == reference, (eol, cut)


async def test_unchanged_events_keep_their_original_bytes() -> None:
    """Event names and ids, role and usage chunks and errors pass byte for byte;
    a comment, which no filter reads, goes on emptied."""
    guard = _guard(restore=True, output=("email",))
    request = await _request(guard, "I am a@x.io")
    assert await guard.stream(request).feed(b": keep-alive\r\n\r\n") == b":\n\n"
    passing = [
        b'event: ping\nid: 4\ndata: {"id":"c1"}\n\n',
        b'data:  {"choices":[{"index":0,"delta":{"role":"assistant"},"finish_reason":null}]}\n\n',
        b'data: {"choices":[],"usage":{"prompt_tokens":1}}\n\n',
        b'data: {"error":{"message":"upstream said no"}}\n\n',
        b'data: {"choices":[{"index":0,"delta":{"content":"ok "},"finish_reason":null}]}\n\n',
    ]
    stream = guard.stream(request)
    for chunk in passing:
        assert await stream.feed(chunk) == chunk


async def test_rewritten_event_keeps_its_other_fields() -> None:
    """An event whose text changed is re-serialised with its other lines kept."""
    guard = _guard(restore=True)
    request = await _request(guard, "I am a@x.io")
    out = await guard.stream(request).feed(
        b"id: 9\ndata: " + orjson.dumps(chat_chunk("<EMAIL_ADDRESS_1>")) + b"\n\n"
    )
    assert out.startswith(b"id: 9\ndata: ")
    assert streamed_text(out.split(b"\n", 1)[1]) == "a@x.io"


async def test_held_text_goes_out_with_the_finish_reason() -> None:
    """The event carrying finish_reason also carries whatever its stream still held."""
    guard = _guard(output=("email",))
    request = await _request(guard)
    stream = guard.stream(request)
    assert streamed_text(await stream.feed(sse(chat_chunk("write to a@x")))) == "write to "
    out = await stream.feed(sse(chat_chunk(finish="stop")))
    [data] = events(out)
    choice = orjson.loads(data)["choices"][0]
    assert choice == {"index": 0, "delta": {"content": "a@x"}, "finish_reason": "stop"}


async def test_held_text_goes_out_before_done() -> None:
    """Without a finish_reason, held text gets a chunk of its own just before [DONE]."""
    guard = _guard(output=("email",))
    request = await _request(guard)
    stream = guard.stream(request)
    await stream.feed(sse(chat_chunk("mail me at x@y.org")))
    out = await stream.feed(b"data: [DONE]\n\n")
    held, done = events(out)
    assert done == b"[DONE]"
    chunk = orjson.loads(held)
    assert chunk["id"] == "chatcmpl-1"
    assert chunk["model"] == "m"
    assert chunk["choices"] == [
        {"index": 0, "delta": {"content": "<EMAIL_ADDRESS_1>"}, "finish_reason": None}
    ]
    assert await stream.finish() == b""


async def test_held_text_goes_out_at_finish() -> None:
    """If the upstream just stops, finish() sends what was held."""
    guard = _guard(restore=True)
    request = await _request(guard, "I am a@x.io")
    stream = guard.stream(request)
    assert await stream.feed(sse(chat_chunk("bye <EMAIL_ADD"))) != b""
    assert streamed_text(await stream.finish()) == "<EMAIL_ADD"


async def test_an_unterminated_last_event_is_still_guarded() -> None:
    """A last event without its blank line is restored at finish(), not passed raw."""
    guard = _guard(restore=True)
    request = await _request(guard, "I am a@x.io")
    stream = guard.stream(request)
    assert await stream.feed(b"data: " + orjson.dumps(chat_chunk("<EMAIL_ADDRESS_1>"))) == b""
    out = await stream.finish()
    assert streamed_text(out) == "a@x.io"
    assert b"<EMAIL" not in out


async def test_tool_call_arguments_are_separate_streams() -> None:
    """Each tool call's arguments restore on their own, even interleaved and split."""
    guard = _guard(restore=True)
    request = await _request(guard, "mail a@x.io and call 555-1234")

    def call(index: int, arguments: str, **extra: Any) -> dict[str, Any]:
        """A chunk carrying one piece of one tool call's arguments."""
        return chat_chunk(
            tool_calls=[{"index": index, "function": {"arguments": arguments}, **extra}]
        )

    chunks = [
        sse(call(0, "", id="c0", type="function")),
        sse(call(0, '{"to": "<EMAIL_ADD')),
        sse(call(1, '{"n": "<PHONE_NUM', id="c1")),
        sse(call(0, 'RESS_1>"}')),
        sse(call(1, "BER_1")),
        sse(chat_chunk(finish="tool_calls")),
        b"data: [DONE]\n\n",
    ]
    out = b"".join(await _feed_all(guard.stream(request), chunks))
    arguments: dict[int, str] = {}
    for data in events(out)[:-1]:
        for tool in orjson.loads(data)["choices"][0]["delta"].get("tool_calls", []):
            arguments[tool["index"]] = (
                arguments.get(tool["index"], "") + tool["function"]["arguments"]
            )
    # Call 1 never closed its placeholder: the partial one goes out as written.
    assert arguments == {0: '{"to": "a@x.io"}', 1: '{"n": "<PHONE_NUMBER_1'}


async def test_legacy_completions_text_and_several_choices() -> None:
    """`choices[].text` streams restore, each choice index on its own, flushed by its finish."""
    guard = _guard(restore=True)
    request = await _completion_request(guard, "a@x.io")

    def chunk(index: int, text: str, finish: str | None = None) -> dict[str, Any]:
        """A legacy completions chunk for one choice."""
        return {
            "object": "text_completion",
            "choices": [{"index": index, "text": text, "finish_reason": finish}],
        }

    chunks = [
        sse(chunk(0, "A <EMAIL_")),
        sse(chunk(1, "B <EMAIL_ADDRESS")),
        sse(chunk(0, "ADDRESS_1> <", "stop")),
        sse(chunk(1, "_1>.")),
        sse(chunk(1, "", "length")),
    ]
    outs = await _feed_all(guard.stream(request), chunks)
    texts: dict[int, str] = {}
    for data in events(b"".join(outs)):
        for choice in orjson.loads(data)["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
    assert texts == {0: "A a@x.io <", 1: "B a@x.io."}
    # Choice 0's finish released its held "<" in that very event.
    assert orjson.loads(events(outs[2])[0])["choices"][0]["text"] == "a@x.io <"


async def test_output_block_mid_stream_ends_with_one_error_event() -> None:
    """A blocked finding ends the stream with an OpenAI error event; nothing follows it."""
    guard = _guard(Mode.MONITOR, output=("phone",), entities={"PHONE_NUMBER": Action.BLOCK})
    request = await _request(guard)
    stream = guard.stream(request)
    first = sse(chat_chunk("Call "))
    assert await stream.feed(first) == first
    assert streamed_text(await stream.feed(sse(chat_chunk("555-12")))) == ""
    out = await stream.feed(sse(chat_chunk("34 now"), chat_chunk(" or later")))
    [data] = events(out)
    error = orjson.loads(data)["error"]
    assert error == {
        "message": "response blocked by policy 'p': PHONE_NUMBER in choices[0].delta.content",
        "type": "invalid_request_error",
        "param": None,
        "code": "guardrail_violation",
    }
    assert stream.verdict == Verdict(("PHONE_NUMBER",), ("choices[0].delta.content",))
    assert await stream.feed(sse(chat_chunk("more"))) == b""
    assert await stream.finish() == b""


async def test_monitor_only_output_forwards_every_byte() -> None:
    """With only monitor actions the client gets the upstream's bytes; findings are counted."""
    guard = _guard(Mode.MONITOR, output=("email",))
    request = await _request(guard)
    chunks = [sse(chat_chunk("mail a@")), sse(chat_chunk("x.io ok")), END]
    out = await _feed_all(guard.stream(request), chunks)
    assert out == [*chunks, b""]
    assert request.summary.counts[Stage.OUTPUT] == {"EMAIL_ADDRESS": 1}


async def test_nothing_to_do_passes_chunks_through() -> None:
    """Without output filters and with nothing redacted, chunks are returned as they came."""
    guard = _guard(restore=True)
    request = await _request(guard, "nothing personal")
    stream = guard.stream(request)
    chunk = b"data: {half"
    assert await stream.feed(chunk) is chunk


async def test_filter_time_is_observed_once_per_stream() -> None:
    """Each output filter's time over a whole stream is one histogram observation."""
    guard = Guard(
        PolicyConfig(name="p", mode=Mode.REDACT, output=("stream_timed",)),
        {"stream_timed": email_filter("stream_timed")},
    )
    request = await _request(guard)
    labels = {"filter": "stream_timed"}
    before = REGISTRY.get_sample_value("gatewayd_filter_duration_seconds_count", labels) or 0.0
    await _feed_all(guard.stream(request), [sse(chat_chunk("a")), sse(chat_chunk("b")), END])
    after = REGISTRY.get_sample_value("gatewayd_filter_duration_seconds_count", labels) or 0.0
    assert after - before == 1


async def test_remote_filter_scans_sentences_one_call_each() -> None:
    """A remote output filter is called per sentence or line, not per token, and redacts."""
    remote = FakeRemote()
    guard = _guard(output=("remote",), extra=(remote,))
    request = await _request(guard)
    answer = "Hello Alice Smith. How are you?\nBob Jones says hi"
    chunks = [sse(chat_chunk(answer[i : i + 4])) for i in range(0, len(answer), 4)] + [END]
    out = await _feed_all(guard.stream(request), chunks)
    assert streamed_text(b"".join(out)) == "Hello <PERSON_1>. How are you?\n<PERSON_2> says hi"
    assert all(len(batch) == 1 for batch in remote.batches)
    segments = [batch[0] for batch in remote.batches]
    assert "".join(segments) == answer
    assert segments[0] == "Hello Alice Smith."
    assert segments[-1] == "Bob Jones says hi"
    assert len(segments) <= 4


async def test_remote_filter_cuts_long_runs_at_a_space() -> None:
    """Text with no sentence end is scanned once about 200 characters have gathered."""
    remote = FakeRemote()
    guard = _guard(output=("remote",), extra=(remote,))
    request = await _request(guard)
    stream = guard.stream(request)
    released = ""
    for _ in range(60):
        released += streamed_text(await stream.feed(sse(chat_chunk("word "))))
    assert remote.batches, "a call before the stream ended"
    assert len(remote.batches[0][0]) >= 200
    assert remote.batches[0][0].endswith(" ")
    assert released.startswith(remote.batches[0][0])


async def test_remote_failure_in_a_stream_follows_on_error() -> None:
    """on_error=allow lets the segment through unchecked; block ends the stream as unavailable."""
    allowing = FakeRemote(fail="timeout")
    guard = _guard(output=("remote",), extra=(allowing,), on_error="allow")
    request = await _request(guard)
    out = await _feed_all(guard.stream(request), [sse(chat_chunk("Alice Smith.\n")), END])
    assert streamed_text(b"".join(out)) == "Alice Smith.\n"
    assert request.summary.unchecked == ["remote"]

    blocking = FakeRemote(fail="connect")
    guard = _guard(output=("remote",), extra=(blocking,))
    request = await _request(guard)
    stream = guard.stream(request)
    out_bytes = await stream.feed(sse(chat_chunk("Alice Smith.\n")))
    error = orjson.loads(events(out_bytes)[-1])["error"]
    assert error["code"] == "guardrail_unavailable"
    assert "Alice" not in error["message"]
    assert stream.verdict == Verdict(unavailable="remote")
    assert await stream.finish() == b""
