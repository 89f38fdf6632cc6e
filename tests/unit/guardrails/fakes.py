"""Small regex filters and SSE helpers for the guardrail engine's tests.

The fakes follow the InlineFilter / RemoteFilter protocols the real filters
implement, so the engine is tested on its own while they are written.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import orjson

from gatewayd.config.schema import Mode, OnError, PolicyConfig
from gatewayd.errors import FilterError
from gatewayd.guardrails.endpoints import CHAT_COMPLETIONS
from gatewayd.guardrails.payload import Payload, json_payload
from gatewayd.guardrails.pipeline import Guard
from gatewayd.guardrails.types import Span

EMAIL = r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"
PHONE = r"\d{3}-\d{4}"


class RegexFilter:
    """An inline filter: one regex per entity, and a holdback regex anchored at the end."""

    def __init__(
        self,
        name: str,
        patterns: dict[str, str],
        holdback: str = r"[\w.+@-]*\Z",
        on_error: OnError | None = None,
    ) -> None:
        self.name = name
        self.on_error = on_error
        self._regex = re.compile("|".join(f"(?P<{e}>{p})" for e, p in patterns.items()))
        self._holdback = re.compile(holdback)
        self.scanned: list[str] = []

    def scan(self, text: str) -> list[Span]:
        """Spans of every entity, in order of start."""
        self.scanned.append(text)
        return [Span(str(m.lastgroup), m.start(), m.end()) for m in self._regex.finditer(text)]

    def holdback(self, text: str) -> int:
        """The trailing run of characters that could still be part of a match."""
        match = self._holdback.search(text)
        return len(match.group()) if match else 0


def email_filter(name: str = "email") -> RegexFilter:
    """Finds EMAIL_ADDRESS; holds back a trailing run of e-mail characters."""
    return RegexFilter(name, {"EMAIL_ADDRESS": EMAIL})


def phone_filter(name: str = "phone") -> RegexFilter:
    """Finds PHONE_NUMBER (555-1234); holds back trailing digits and dashes."""
    return RegexFilter(name, {"PHONE_NUMBER": rf"\b{PHONE}\b"}, holdback=r"[\d-]*\Z")


class FakeRemote:
    """A remote filter: finds its regex in each text, records every batch, may fail."""

    def __init__(
        self,
        name: str = "remote",
        patterns: dict[str, str] | None = None,
        *,
        fail: str | None = None,
        on_error: OnError | None = None,
    ) -> None:
        self.name = name
        self.on_error = on_error
        self.fail = fail
        self.batches: list[list[str]] = []
        self._inline = RegexFilter(name, patterns or {"PERSON": r"\b(?:Alice|Bob) \w+"})

    async def scan_batch(self, texts: Sequence[str]) -> list[list[Span]]:
        """Spans per text in one call, or FilterError(kind=fail)."""
        self.batches.append(list(texts))
        if self.fail is not None:
            raise FilterError(self.name, self.fail, "service failed")
        return [self._inline.scan(text) for text in texts]


def chat_chunk(
    content: str | None = None, *, index: int = 0, finish: str | None = None, **delta: Any
) -> dict[str, Any]:
    """One chat.completion.chunk with one choice."""
    body: dict[str, Any] = dict(delta)
    if content is not None:
        body["content"] = content
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": index, "delta": body, "finish_reason": finish}],
    }


def sse(*docs: dict[str, Any] | str) -> bytes:
    """SSE bytes: each doc as a `data:` event; a str is sent as the data itself."""
    out = b""
    for doc in docs:
        data = doc.encode() if isinstance(doc, str) else orjson.dumps(doc)
        out += b"data: " + data + b"\n\n"
    return out


def events(stream: bytes) -> list[bytes]:
    """The data of each event in plain `\\n\\n`-separated SSE bytes."""
    out = []
    for block in stream.split(b"\n\n"):
        if block.startswith(b"data: "):
            out.append(block[6:])
    return out


def streamed_text(stream: bytes, field: str = "content") -> str:
    """What a client assembles from a chat stream: every choice 0 delta's `field`."""
    text = ""
    for data in events(stream):
        if data == b"[DONE]":
            continue
        doc = orjson.loads(data)
        for choice in doc.get("choices", []):
            value = choice.get("delta", {}).get(field)
            if isinstance(value, str):
                text += value
    return text


def chat_payload(doc: dict[str, Any]) -> Payload:
    """A parsed chat completions request, as the proxy hands it to a guard."""
    return json_payload(CHAT_COMPLETIONS, doc)


def restoring_guard(unknown: OnError = "block", output: tuple[str, ...] = ("email",)) -> Guard:
    """A redacting, restoring policy "p" with the e-mail and phone fakes as input filters."""
    policy = PolicyConfig(
        name="p",
        mode=Mode.REDACT,
        input=("email", "phone"),
        output=output,
        restore=True,
        unknown=unknown,
    )
    return Guard(policy, {"email": email_filter(), "phone": phone_filter()})
