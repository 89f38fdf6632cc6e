"""Where the OpenAI APIs carry text in a parsed payload, with a way to write it back.

A whole request or answer yields `TextSlot`s: the dict or list holding a text,
its key there, and its path, which names the field in a block message
(`messages[1].content[0].text`) without ever quoting the text. Writing a slot
changes the document in place, so only a changed document is serialised again.

A streamed chunk yields `ChunkText`s instead: each continues one stream of
text, a choice's message (`delta.content` or `text`) or one of its tool calls.
They are plain tuples: a stream of ~50 events makes many of them.
"""

from __future__ import annotations

from typing import Any

Path = tuple[str | int, ...]

CONTENT = "content"
TEXT = "text"
ARGUMENTS = "arguments"
MESSAGE = -1
"""The tool index of a choice's own text, as opposed to one of its tool calls."""


class TextSlot:
    """One text inside a parsed payload."""

    __slots__ = ("key", "parent", "path")

    def __init__(self, parent: Any, key: str | int, path: Path) -> None:
        self.parent = parent
        self.key = key
        self.path = path

    @property
    def text(self) -> str:
        """The text as the document holds it now."""
        text: str = self.parent[self.key]
        return text

    def write(self, text: str) -> None:
        """Replace the text in the document."""
        self.parent[self.key] = text

    @property
    def location(self) -> str:
        """The field, as `messages[1].content`."""
        parts: list[str] = []
        for step in self.path:
            if isinstance(step, int):
                parts.append(f"[{step}]")
            else:
                parts.append(f".{step}" if parts else step)
        return "".join(parts)


def request_texts(doc: dict[str, Any]) -> list[TextSlot]:
    """Every text of a chat, completions, embeddings or responses request."""
    slots: list[TextSlot] = []
    messages = doc.get("messages")
    if isinstance(messages, list):
        for i, message in enumerate(messages):
            if isinstance(message, dict):
                _message(message, ("messages", i), slots)
    _strings(doc, "prompt", slots)
    inputs = doc.get("input")
    if isinstance(inputs, list):
        for i, item in enumerate(inputs):
            if isinstance(item, str):
                slots.append(TextSlot(inputs, i, ("input", i)))
            elif isinstance(item, dict):
                _content(item, ("input", i), slots)
    elif isinstance(inputs, str):
        slots.append(TextSlot(doc, "input", ("input",)))
    if isinstance(doc.get("instructions"), str):
        slots.append(TextSlot(doc, "instructions", ("instructions",)))
    return slots


def response_texts(doc: dict[str, Any]) -> list[TextSlot]:
    """Every text of a whole chat, completions or responses answer."""
    slots: list[TextSlot] = []
    choices = doc.get("choices")
    if isinstance(choices, list):
        for i, choice in enumerate(choices):
            if not isinstance(choice, dict):
                continue
            message = choice.get("message")
            if isinstance(message, dict):
                _message(message, ("choices", i, "message"), slots)
            if isinstance(choice.get("text"), str):
                slots.append(TextSlot(choice, "text", ("choices", i, "text")))
    output = doc.get("output")
    if isinstance(output, list):
        for k, item in enumerate(output):
            if isinstance(item, dict):
                _content(item, ("output", k), slots)
    return slots


def _message(message: dict[str, Any], path: Path, slots: list[TextSlot]) -> None:
    _content(message, path, slots)
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        for j, call in enumerate(calls):
            if isinstance(call, dict):
                _arguments(call, (*path, "tool_calls", j), slots)
    _arguments(message, path, slots)


def _arguments(holder: dict[str, Any], path: Path, slots: list[TextSlot]) -> None:
    # Tool calls carry `function`; the legacy message form carries `function_call`.
    for key in ("function", "function_call"):
        function = holder.get(key)
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            slots.append(TextSlot(function, "arguments", (*path, key, "arguments")))


def _content(holder: dict[str, Any], path: Path, slots: list[TextSlot]) -> None:
    content = holder.get("content")
    if isinstance(content, str):
        slots.append(TextSlot(holder, "content", (*path, "content")))
    elif isinstance(content, list):
        # Text parts (`text`, `input_text`, `output_text`) all keep it under
        # `text`; image, audio and file parts have none.
        for j, part in enumerate(content):
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                slots.append(TextSlot(part, "text", (*path, "content", j, "text")))


def _strings(doc: dict[str, Any], key: str, slots: list[TextSlot]) -> None:
    value = doc.get(key)
    if isinstance(value, str):
        slots.append(TextSlot(doc, key, (key,)))
    elif isinstance(value, list):
        # Lists of token ids carry no text to read.
        for i, item in enumerate(value):
            if isinstance(item, str):
                slots.append(TextSlot(value, i, (key, i)))


ChunkText = tuple[dict[str, Any], str, int]
"""One piece of streamed text: the dict holding it, its key there, its tool index."""


def chunk_texts(choice: dict[str, Any]) -> list[ChunkText]:
    """The texts one streamed choice carries: message text and tool-call arguments."""
    texts: list[ChunkText] = []
    delta = choice.get("delta")
    if isinstance(delta, dict):
        if isinstance(delta.get(CONTENT), str):
            texts.append((delta, CONTENT, MESSAGE))
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for j, call in enumerate(calls):
                if not isinstance(call, dict):
                    continue
                function = call.get("function")
                if isinstance(function, dict) and isinstance(function.get(ARGUMENTS), str):
                    tool = call.get("index", j)
                    texts.append((function, ARGUMENTS, tool if isinstance(tool, int) else j))
    if isinstance(choice.get(TEXT), str):
        texts.append((choice, TEXT, MESSAGE))
    return texts


def chunk_location(choice: int, key: str, tool: int) -> str:
    """The field a stream's text arrives in, as `choices[0].delta.content`."""
    if key == ARGUMENTS:
        return f"choices[{choice}].delta.tool_calls[{tool}].function.arguments"
    if key == TEXT:
        return f"choices[{choice}].text"
    return f"choices[{choice}].delta.content"


def add_chunk_text(choice: dict[str, Any], key: str, tool: int, text: str) -> None:
    """Put text into a streamed choice that carried none for this stream."""
    if key == TEXT:
        choice[TEXT] = text
        return
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        delta = choice["delta"] = {}
    if key == CONTENT:
        delta[CONTENT] = text
        return
    calls = delta.get("tool_calls")
    if not isinstance(calls, list):
        calls = delta["tool_calls"] = []
    calls.append({"index": tool, "function": {ARGUMENTS: text}})


def new_choice(index: int, key: str) -> dict[str, Any]:
    """An empty streamed choice, to carry held-back text in a chunk of its own."""
    if key == TEXT:
        return {"index": index, TEXT: "", "finish_reason": None}
    return {"index": index, "delta": {}, "finish_reason": None}
