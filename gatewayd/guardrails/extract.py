"""Where a streamed event carries text that continues from event to event.

Whole payloads are read through their endpoint's shape (shapes.py,
endpoints.py). A stream also needs to know which strings are pieces of one
longer text: a chat choice's `delta.content`, its refusal, reasoning, audio
transcript, each tool call's arguments; a Responses event's `delta`. Each of
those is a *channel*, and each channel is its own stream of text. Every other
string in an event is read whole.
"""

from __future__ import annotations

from typing import Any

CONTENT = "content"
TEXT = "text"
ARGUMENTS = "arguments"
REFUSAL = "refusal"
TRANSCRIPT = "transcript"
FUNCTION_CALL = "function_call"
MESSAGE = -1
"""The tool index of a choice's own texts, as opposed to one of its tool calls."""

# Channels kept directly in `delta` under their own name.
_DELTA_KEYS = (CONTENT, REFUSAL, "reasoning_content", "reasoning")
# Channels whose text is JSON: restored values are escaped for it.
JSON_CHANNELS = frozenset({ARGUMENTS, FUNCTION_CALL})

ChunkText = tuple[dict[str, Any], str, str, int]
"""One piece of streamed text: the dict holding it, its key there, its channel, its tool index."""


def chunk_texts(choice: dict[str, Any]) -> list[ChunkText]:
    """The pieces of text one streamed chat or completions choice carries."""
    texts: list[ChunkText] = []
    delta = choice.get("delta")
    if isinstance(delta, dict):
        for key in _DELTA_KEYS:
            if isinstance(delta.get(key), str):
                texts.append((delta, key, key, MESSAGE))
        audio = delta.get("audio")
        if isinstance(audio, dict) and isinstance(audio.get(TRANSCRIPT), str):
            texts.append((audio, TRANSCRIPT, TRANSCRIPT, MESSAGE))
        legacy = delta.get(FUNCTION_CALL)
        if isinstance(legacy, dict) and isinstance(legacy.get(ARGUMENTS), str):
            texts.append((legacy, ARGUMENTS, FUNCTION_CALL, MESSAGE))
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for j, call in enumerate(calls):
                if not isinstance(call, dict):
                    continue
                function = call.get("function")
                if isinstance(function, dict) and isinstance(function.get(ARGUMENTS), str):
                    tool = call.get("index", j)
                    texts.append(
                        (function, ARGUMENTS, ARGUMENTS, tool if isinstance(tool, int) else j)
                    )
    if isinstance(choice.get(TEXT), str):
        texts.append((choice, TEXT, TEXT, MESSAGE))
    return texts


def chunk_location(choice: int, channel: str, tool: int) -> str:
    """The field a channel's text arrives in, as `choices[0].delta.content`."""
    if channel == ARGUMENTS:
        return f"choices[{choice}].delta.tool_calls[{tool}].function.arguments"
    if channel == TEXT:
        return f"choices[{choice}].text"
    if channel == TRANSCRIPT:
        return f"choices[{choice}].delta.audio.transcript"
    if channel == FUNCTION_CALL:
        return f"choices[{choice}].delta.function_call.arguments"
    return f"choices[{choice}].delta.{channel}"


def add_chunk_text(choice: dict[str, Any], channel: str, tool: int, text: str) -> None:
    """Put text into a streamed choice that carried none for this channel."""
    if channel == TEXT:
        choice[TEXT] = text
        return
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        delta = choice["delta"] = {}
    if channel == TRANSCRIPT:
        delta.setdefault("audio", {})[TRANSCRIPT] = text
    elif channel == FUNCTION_CALL:
        delta.setdefault(FUNCTION_CALL, {})[ARGUMENTS] = text
    elif channel == ARGUMENTS:
        calls = delta.get("tool_calls")
        if not isinstance(calls, list):
            calls = delta["tool_calls"] = []
        calls.append({"index": tool, "function": {ARGUMENTS: text}})
    else:
        delta[channel] = text


def new_choice(index: int, channel: str) -> dict[str, Any]:
    """An empty streamed choice, to carry held-back text in a chunk of its own."""
    if channel == TEXT:
        return {"index": index, TEXT: "", "finish_reason": None}
    return {"index": index, "delta": {}, "finish_reason": None}
