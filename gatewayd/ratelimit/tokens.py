"""How many tokens a request may use, before the call, and did use, after it.

The reservation is an upper bound a client cannot talk down: the prompt's
size (about four bytes of JSON per token, which over-counts, as it should)
plus the largest output maximum the request names, times the number of
choices asked for. Naming a small `max_tokens` beside a large
`max_completion_tokens` reserves the large one. After the answer the
reservation is settled to the `usage` the upstream reports.
"""

from __future__ import annotations

import re
from typing import Any, TypeGuard

import orjson

from gatewayd.guardrails.sse import Event, SSEParser

# Fields that cap a generation's output, across the chat, completions and
# responses APIs; the upstream honours whichever it knows, so all count.
_OUTPUT_CAPS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
# Endpoints that generate; others (embeddings, moderations) use prompt tokens only.
_GENERATING = ("/chat/completions", "/completions", "/responses")
_BYTES_PER_TOKEN = 4


def reservation(doc: dict[str, Any] | None, size: int, path: str, default_output: int) -> int:
    """Tokens to reserve for a request of `size` bytes whose JSON is `doc`."""
    prompt = -(-size // _BYTES_PER_TOKEN)
    if not path.rstrip("/").endswith(_GENERATING):
        return prompt
    if doc is None:
        # Not JSON the gateway can read, yet the upstream may: assume the default.
        return prompt + default_output
    caps = [doc[k] for k in _OUTPUT_CAPS if _count(doc.get(k))]
    output = max(caps) if caps else default_output
    choices = doc.get("n")
    return prompt + output * (choices if _count(choices) and choices >= 1 else 1)


def wants_usage_event(doc: dict[str, Any] | None, path: str) -> bool:
    """A streamed chat or completions request that did not ask for its usage.

    Those streams report usage only in an extra last event that
    `stream_options.include_usage` asks for; the Responses API always ends
    its streams with the usage, so it needs no asking.
    """
    if doc is None or doc.get("stream") is not True:
        return False
    if not path.rstrip("/").endswith(("/chat/completions", "/completions")):
        return False
    options = doc.get("stream_options")
    return not (isinstance(options, dict) and options.get("include_usage") is True)


def _count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class UsageEventStrip:
    """Takes out of a stream the usage event the gateway asked for on the client's behalf.

    With `stream_options.include_usage`, chat and completions streams end
    with one extra event whose `choices` is empty and whose `usage` is set;
    a client that did not ask for it gets the stream it asked for. Its usage
    is kept for settling the token reservation. Events pass whole, as they
    end, and byte for byte.
    """

    __slots__ = ("_parser", "usage")

    def __init__(self) -> None:
        self._parser = SSEParser()
        self.usage: dict[str, Any] | None = None

    def feed(self, chunk: bytes) -> bytes:
        return self._keep(self._parser.feed(chunk))

    def finish(self) -> bytes:
        return self._keep(self._parser.finish())

    def _keep(self, events: list[Event]) -> bytes:
        kept = [event.raw for event in events if not self._is_usage(event)]
        return b"".join(kept)

    def _is_usage(self, event: Event) -> bool:
        data = event.data
        if data is None or b'"usage"' not in data or _NULL_USAGE.search(data):
            return False
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            return False
        if not (isinstance(doc, dict) and doc.get("choices") == []):
            return False
        usage = doc.get("usage")
        if not isinstance(usage, dict):
            return False
        self.usage = usage
        return True


# Every other event of such a stream carries `"usage": null`.
_NULL_USAGE = re.compile(rb'"usage"\s*:\s*null')
