"""Finding the texts OpenAI payloads carry, naming their fields, writing them back."""

from __future__ import annotations

from typing import Any

from gatewayd.guardrails.extract import (
    ARGUMENTS,
    CONTENT,
    MESSAGE,
    TEXT,
    add_chunk_text,
    chunk_location,
    chunk_texts,
    new_choice,
    request_texts,
    response_texts,
)


def _found(slots: list[Any]) -> list[tuple[str, str]]:
    return [(slot.location, slot.text) for slot in slots]


def test_chat_request_texts_strings_parts_and_tool_calls() -> None:
    """Chat messages yield string content, text parts, tool-call and legacy function arguments."""
    doc = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look at this"},
                    {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                    {"type": "text", "text": "and this"},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                    {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "[1]"}},
                ],
            },
            {"role": "assistant", "function_call": {"name": "h", "arguments": '{"a": 1}'}},
            {"role": "tool", "tool_call_id": "c1", "content": "result"},
        ],
    }
    assert _found(request_texts(doc)) == [
        ("messages[0].content", "be brief"),
        ("messages[1].content[0].text", "look at this"),
        ("messages[1].content[2].text", "and this"),
        ("messages[2].tool_calls[0].function.arguments", "{}"),
        ("messages[2].tool_calls[1].function.arguments", "[1]"),
        ("messages[3].function_call.arguments", '{"a": 1}'),
        ("messages[4].content", "result"),
    ]


def test_completions_prompt_as_string_and_list() -> None:
    """A completions prompt is read as one string or as each string of a list."""
    assert _found(request_texts({"prompt": "hello"})) == [("prompt", "hello")]
    assert _found(request_texts({"prompt": ["a", "b"]})) == [("prompt[0]", "a"), ("prompt[1]", "b")]


def test_token_id_prompts_and_inputs_are_skipped() -> None:
    """Lists of token ids (flat or nested) carry no text and yield nothing."""
    assert request_texts({"prompt": [1, 2, 3]}) == []
    assert request_texts({"input": [[1, 2], [3]]}) == []
    assert request_texts({"input": [5, 6]}) == []


def test_embeddings_input_as_string_and_list() -> None:
    """Embeddings input is read as one string or each string of a list."""
    assert _found(request_texts({"input": "one"})) == [("input", "one")]
    assert _found(request_texts({"input": ["x", "y"]})) == [("input[0]", "x"), ("input[1]", "y")]


def test_responses_input_items_and_instructions() -> None:
    """Responses API input items with string or part content, and instructions, are read."""
    doc = {
        "instructions": "answer in French",
        "input": [
            {"role": "user", "content": "first"},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "second"},
                    {"type": "input_image", "image_url": "https://x"},
                ],
            },
        ],
    }
    assert _found(request_texts(doc)) == [
        ("input[0].content", "first"),
        ("input[1].content[0].text", "second"),
        ("instructions", "answer in French"),
    ]


def test_response_texts_of_chat_completions_and_responses() -> None:
    """Answers yield message content, tool-call arguments, completion text and output parts."""
    doc = {
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "hi",
                    "tool_calls": [{"function": {"name": "f", "arguments": '{"q": 1}'}}],
                },
            },
            {"index": 1, "text": "legacy"},
        ],
        "output": [
            {"type": "reasoning", "summary": []},
            {"type": "message", "content": [{"type": "output_text", "text": "resp"}]},
        ],
    }
    assert _found(response_texts(doc)) == [
        ("choices[0].message.content", "hi"),
        ("choices[0].message.tool_calls[0].function.arguments", '{"q": 1}'),
        ("choices[1].text", "legacy"),
        ("output[1].content[0].text", "resp"),
    ]


def test_non_text_shapes_are_ignored() -> None:
    """Nulls, numbers and odd shapes where text could be are skipped, not errors."""
    doc = {
        "messages": ["bare", {"content": 3}, {"content": [None, {"text": 4}]}],
        "choices": [None, {"message": None, "text": None}],
        "output": [{"content": "plain string is not a responses part list"}],
    }
    assert request_texts(doc) == []
    assert [slot.location for slot in response_texts(doc)] == ["output[0].content"]


def test_writing_a_slot_changes_the_document() -> None:
    """Each slot writes its new text back where it came from, list items included."""
    doc = {
        "messages": [{"content": [{"type": "text", "text": "a"}]}],
        "input": ["b", "c"],
        "instructions": "d",
    }
    for slot in request_texts(doc):
        slot.write(slot.text.upper())
    assert doc == {
        "messages": [{"content": [{"type": "text", "text": "A"}]}],
        "input": ["B", "C"],
        "instructions": "D",
    }


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
    found = [(key, tool, holder[key]) for holder, key, tool in chunk_texts(choice)]
    assert found == [(CONTENT, MESSAGE, "he"), (ARGUMENTS, 2, '{"a')]
    [(holder, key, tool)] = chunk_texts({"index": 0, "text": "x"})
    assert (holder[key], key, tool) == ("x", TEXT, MESSAGE)
    assert chunk_texts({"index": 0, "delta": {"role": "assistant"}}) == []


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
