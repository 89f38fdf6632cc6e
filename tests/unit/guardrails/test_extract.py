"""The channels of streamed text, their names, and putting held text back into a chunk."""

from __future__ import annotations

from typing import Any

from gatewayd.guardrails.extract import (
    ARGUMENTS,
    CONTENT,
    FUNCTION_CALL,
    MESSAGE,
    REFUSAL,
    TEXT,
    TRANSCRIPT,
    add_chunk_text,
    chunk_location,
    chunk_texts,
    new_choice,
)


def test_chunk_texts_of_delta_content_text_and_tool_calls() -> None:
    """A streamed choice yields its delta content, its text, and each tool call by its index."""
    choice = {
        "index": 0,
        "delta": {
            "content": "he",
            "tool_calls": [
                {"index": 2, "function": {"arguments": '{"a'}},
                {"index": 3, "id": "c", "function": {"name": "f"}},
            ],
        },
    }
    found = [(channel, tool, holder[key]) for holder, key, channel, tool in chunk_texts(choice)]
    assert found == [(CONTENT, MESSAGE, "he"), (ARGUMENTS, 2, '{"a')]
    [(holder, key, channel, tool)] = chunk_texts({"index": 0, "text": "x"})
    assert (holder[key], channel, tool) == ("x", TEXT, MESSAGE)
    assert chunk_texts({"index": 0, "delta": {"role": "assistant"}}) == []


def test_chunk_texts_of_refusal_reasoning_transcript_and_legacy_function_call() -> None:
    """Refusals, reasoning, audio transcripts and legacy function calls stream as channels too."""
    choice = {
        "index": 0,
        "delta": {
            "refusal": "I can't",
            "reasoning_content": "think",
            "audio": {"transcript": "spoken", "data": "AAAA"},
            "function_call": {"arguments": '{"x"'},
        },
    }
    found = [(channel, holder[key]) for holder, key, channel, _ in chunk_texts(choice)]
    assert found == [
        (REFUSAL, "I can't"),
        ("reasoning_content", "think"),
        (TRANSCRIPT, "spoken"),
        (FUNCTION_CALL, '{"x"'),
    ]
    assert chunk_location(0, TRANSCRIPT, MESSAGE) == "choices[0].delta.audio.transcript"
    assert chunk_location(0, FUNCTION_CALL, MESSAGE) == "choices[0].delta.function_call.arguments"
    fresh = new_choice(0, TRANSCRIPT)
    add_chunk_text(fresh, TRANSCRIPT, MESSAGE, "held")
    add_chunk_text(fresh, FUNCTION_CALL, MESSAGE, "}")
    add_chunk_text(fresh, REFUSAL, MESSAGE, ".")
    assert fresh["delta"] == {
        "audio": {"transcript": "held"},
        "function_call": {"arguments": "}"},
        "refusal": ".",
    }


def test_chunk_locations_name_the_streamed_field() -> None:
    """Stream locations read like the chunk's own paths."""
    assert chunk_location(1, CONTENT, MESSAGE) == "choices[1].delta.content"
    assert chunk_location(0, TEXT, MESSAGE) == "choices[0].text"
    assert chunk_location(0, ARGUMENTS, 2) == "choices[0].delta.tool_calls[2].function.arguments"


def test_adding_chunk_text_creates_the_fields() -> None:
    """Held text can be put into a choice that had no such field, or a fresh one."""
    choice: dict[str, Any] = {"index": 0, "delta": {}, "finish_reason": "stop"}
    add_chunk_text(choice, CONTENT, MESSAGE, "tail")
    add_chunk_text(choice, ARGUMENTS, 1, '"}')
    assert choice["delta"] == {
        "content": "tail",
        "tool_calls": [{"index": 1, "function": {"arguments": '"}'}}],
    }
    fresh = new_choice(2, TEXT)
    add_chunk_text(fresh, TEXT, MESSAGE, "rest")
    assert fresh == {"index": 2, "text": "rest", "finish_reason": None}
    assert new_choice(0, CONTENT) == {"index": 0, "delta": {}, "finish_reason": None}
