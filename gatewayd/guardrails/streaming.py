"""The output guardrails of a streamed (SSE) answer, event by event.

Each choice's message text, and each of its tool calls' arguments, is its own
stream of text: placeholders are restored (holding back only a partial one),
then each output filter holds back only what could still become a match, and
the rest goes out in the same event. Held text goes out in a later event of
its stream, in the event carrying the choice's `finish_reason`, in a chunk of
its own before `data: [DONE]`, or at `finish()`.

Events nobody changed are forwarded as the bytes that came; a changed one is
re-serialised. A block ends the stream with one OpenAI-style error event.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import orjson

from gatewayd.errors import FilterError
from gatewayd.guardrails.actions import Applier, CompiledFilter, Rules
from gatewayd.guardrails.buffers import FilterClock, InlineBuffer, RemoteBuffer
from gatewayd.guardrails.extract import (
    add_chunk_text,
    chunk_location,
    chunk_texts,
    new_choice,
)
from gatewayd.guardrails.placeholders import Range, Redactions, StreamRestorer
from gatewayd.guardrails.sse import Event, SSEParser, encode
from gatewayd.guardrails.types import ALLOW, Stage, Summary, Verdict

_DONE = b"[DONE]"
# "<" as JSON may also escape it (Go's encoding/json does).
_ESCAPED_LT = (b"\\u003c", b"\\u003C")
# Fields of the last chunk copied into a chunk made to carry held-back text.
_CHUNK_FIELDS = ("id", "object", "created", "model", "system_fingerprint")


class _Stream:
    """One stream of text within the answer, with its buffers."""

    __slots__ = ("buffers", "choice", "key", "location", "restorer", "tool")

    def __init__(
        self,
        choice: int,
        key: str,
        tool: int,
        restorer: StreamRestorer | None,
        buffers: list[InlineBuffer | RemoteBuffer],
    ) -> None:
        self.choice = choice
        self.key = key
        self.tool = tool
        self.location = chunk_location(choice, key, tool)
        self.restorer = restorer
        self.buffers = buffers


class _Item:
    """One piece of text to push through a stream, and where its output goes."""

    __slots__ = ("choice", "final", "holder", "out", "stream", "text")

    def __init__(
        self,
        stream: _Stream,
        text: str,
        final: bool,
        holder: dict[str, Any] | None,
        choice: dict[str, Any] | None,
    ) -> None:
        self.stream = stream
        self.text = text
        self.final = final
        # The dict the text came in (its key is the stream's), or None when
        # held text is put into `choice` (or a new chunk, if that is None too).
        self.holder = holder
        self.choice = choice
        self.out = ""


class _Work:
    """One event to answer: its pieces of text, or the flush at the stream's end."""

    __slots__ = ("doc", "event", "items")

    def __init__(self, event: Event | None, doc: dict[str, Any] | None, items: list[_Item]) -> None:
        self.event = event
        self.doc = doc
        self.items = items


class StreamGuard:
    """Restores and filters one SSE answer as its bytes arrive."""

    __slots__ = (
        "_applier",
        "_clocks",
        "_holding",
        "_last",
        "_observed",
        "_parser",
        "_passthrough",
        "_policy",
        "_redactions",
        "_remote",
        "_restore_only",
        "_shadow",
        "_stopped",
        "_streams",
        "_summary",
        "verdict",
    )

    def __init__(
        self,
        filters: tuple[CompiledFilter, ...],
        rules: Rules,
        redactions: Redactions | None,
        summary: Summary,
    ) -> None:
        self.verdict: Verdict = ALLOW
        self._policy = rules.policy
        self._summary = summary
        self._redactions = redactions if redactions else None
        self._applier = Applier(rules, Stage.OUTPUT, summary, redactions or Redactions())
        self._clocks = [FilterClock(compiled) for compiled in filters]
        self._remote = any(compiled.remote is not None for compiled in filters)
        self._passthrough = not filters and self._redactions is None
        self._restore_only = not filters and self._redactions is not None
        # Restoring only: may a stream hold a partial placeholder?
        self._holding = False
        # Findings can only be counted: the client gets the upstream's bytes
        # as they came while the filters read along.
        self._shadow = rules.monitor_only and self._redactions is None
        self._parser = SSEParser()
        self._streams: dict[tuple[int, int], _Stream] = {}
        self._last: dict[str, Any] = {}
        self._stopped = False
        self._observed = False

    async def feed(self, chunk: bytes) -> bytes:
        """Bytes from the upstream, in any pieces; returns the bytes to send now."""
        if self._passthrough:
            return chunk
        if self._stopped:
            return b""
        works = [self._prepare(event) for event in self._parser.feed(chunk)]
        count = await self._push_remote(works) if self._remote else self._push(works)
        return self._render(works, count)

    async def finish(self) -> bytes:
        """The upstream ended: everything still held back, in chunks of its own."""
        if self._passthrough or self._stopped:
            return b""
        works = [self._prepare(event) for event in self._parser.finish()]
        works.append(_Work(None, None, self._flush()))
        count = await self._push_remote(works) if self._remote else self._push(works)
        return self._render(works, count)

    def _prepare(self, event: Event) -> bytes | _Work:
        """The pieces of text an event carries, or its bytes if it carries none."""
        data = event.data
        if data is None:
            return event.raw
        if data == _DONE:
            return _Work(event, None, self._flush())
        if self._restore_only:
            if not self._holding and not _may_hold_placeholder(data):
                # Nothing to restore in it and nothing held: no need to parse it.
                return event.raw
            # It may leave a partial placeholder for the events after it in
            # this feed; _push finds out once they have all been read.
            self._holding = True
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            return event.raw
        choices = doc.get("choices") if isinstance(doc, dict) else None
        if not isinstance(choices, list) or not choices:
            # An error, or the final usage chunk: nothing to read.
            return event.raw
        self._last = doc
        items: list[_Item] = []
        for position, choice in enumerate(choices):
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", position)
            if not isinstance(index, int):
                index = position
            final = choice.get("finish_reason") is not None
            for holder, key, tool in chunk_texts(choice):
                stream = self._stream(index, key, tool)
                items.append(_Item(stream, holder[key], final, holder, choice))
            if final:
                self._finish_choice(index, choice, items)
        if not items:
            return event.raw
        return _Work(event, doc, items)

    def _stream(self, choice: int, key: str, tool: int) -> _Stream:
        stream = self._streams.get((choice, tool))
        if stream is None:
            buffers: list[InlineBuffer | RemoteBuffer] = []
            for clock in self._clocks:
                inline, remote = clock.compiled.inline, clock.compiled.remote
                if inline is not None:
                    buffers.append(InlineBuffer(clock, inline))
                elif remote is not None:
                    buffers.append(RemoteBuffer(clock, remote))
            restorer = self._redactions.restorer() if self._redactions is not None else None
            stream = self._streams[choice, tool] = _Stream(choice, key, tool, restorer, buffers)
        return stream

    def _finish_choice(self, index: int, choice: dict[str, Any], items: list[_Item]) -> None:
        """The choice ended: its streams release everything, into this event."""
        in_event = {id(item.stream) for item in items}
        for key in [key for key in self._streams if key[0] == index]:
            stream = self._streams.pop(key)
            if id(stream) not in in_event:
                items.append(_Item(stream, "", True, None, choice))

    def _flush(self) -> list[_Item]:
        items = [_Item(stream, "", True, None, None) for stream in self._streams.values()]
        self._streams.clear()
        return items

    def _push(self, works: list[bytes | _Work]) -> int:
        """Run every piece through its stream; returns how many events to send."""
        for n, work in enumerate(works):
            if isinstance(work, _Work):
                for item in work.items:
                    stream = item.stream
                    text, protected = self._restore(stream, item.text, item.final)
                    item.out = self._advance(stream, text, protected, item.final, 0)[0]
                    if self._stopped:
                        return n
        if self._restore_only:
            self._holding = any(
                stream.restorer is not None and stream.restorer.holding
                for stream in self._streams.values()
            )
        return len(works)

    async def _push_remote(self, works: list[bytes | _Work]) -> int:
        """Like `_push`, awaiting each remote filter's call on a segment once it is ready."""
        for n, work in enumerate(works):
            if isinstance(work, _Work):
                for item in work.items:
                    stream, final = item.stream, item.final
                    text, protected = self._restore(stream, item.text, final)
                    text, protected, i = self._advance(stream, text, protected, final, 0)
                    while i < len(stream.buffers) and not self._stopped:
                        text, protected = await self._scan_remote(
                            stream.buffers[i], text, protected, final, stream
                        )
                        text, protected, i = self._advance(stream, text, protected, final, i + 1)
                    item.out = text
                    if self._stopped:
                        return n
        return len(works)

    @staticmethod
    def _restore(stream: _Stream, text: str, final: bool) -> tuple[str, Sequence[Range]]:
        if stream.restorer is None:
            return text, ()
        return stream.restorer.push(text, final)

    def _advance(
        self, stream: _Stream, text: str, protected: Sequence[Range], final: bool, i: int
    ) -> tuple[str, Sequence[Range], int]:
        """Push text through the inline buffers from the i-th, up to the next remote one."""
        buffers = stream.buffers
        while i < len(buffers):
            buffer = buffers[i]
            if isinstance(buffer, RemoteBuffer):
                return text, protected, i
            if not text and not final:
                # Nothing new reaches the filters after this one either.
                return text, protected, len(buffers)
            text, protected = buffer.push(text, protected, final, self._applier, stream)
            if self._applier.blocked:
                self._block()
                return "", (), len(buffers)
            i += 1
        return text, protected, i

    async def _scan_remote(
        self,
        buffer: InlineBuffer | RemoteBuffer,
        text: str,
        protected: Sequence[Range],
        final: bool,
        stream: _Stream,
    ) -> tuple[str, Sequence[Range]]:
        """Scan the segment the remote filter's buffer has ready, if any, in one call."""
        if not isinstance(buffer, RemoteBuffer):
            return text, protected
        segment, head = buffer.take(text, protected, final)
        if not segment:
            return segment, head
        clock = buffer.clock
        start = time.perf_counter()
        try:
            found = await buffer.filter.scan_batch([segment])
        except FilterError as exc:
            clock.total += time.perf_counter() - start
            if clock.compiled.failed(exc, self._summary):
                self.verdict = Verdict(unavailable=clock.compiled.name)
                self._stopped = True
            return segment, head
        clock.total += time.perf_counter() - start
        text, protected = self._applier.apply(clock.compiled.name, segment, found[0], head, stream)
        if self._applier.blocked:
            self._block()
        return text, protected

    def _block(self) -> None:
        blocked, fields = self._applier.verdict_parts()
        self.verdict = Verdict(blocked=blocked, blocked_fields=fields)
        self._stopped = True

    def _render(self, works: list[bytes | _Work], count: int) -> bytes:
        """The bytes of the first `count` events, then the error event if the stream stopped."""
        out: list[bytes] = []
        for work in works[:count]:
            if isinstance(work, bytes):
                out.append(work)
            elif work.doc is not None and work.event is not None:
                out.append(self._render_chunk(work.event, work.doc, work.items))
            else:
                self._render_flush(work, out)
        if self._stopped:
            out.append(self._error_event())
            self._observe()
        return b"".join(out)

    def _render_chunk(self, event: Event, doc: dict[str, Any], items: list[_Item]) -> bytes:
        if self._shadow:
            return event.raw
        changed = False
        for item in items:
            if item.holder is not None:
                if item.out != item.text:
                    item.holder[item.stream.key] = item.out
                    changed = True
            elif item.out and item.choice is not None:
                stream = item.stream
                add_chunk_text(item.choice, stream.key, stream.tool, item.out)
                changed = True
        return encode(event.other, orjson.dumps(doc)) if changed else event.raw

    def _render_flush(self, work: _Work, out: list[bytes]) -> None:
        """Held text in chunks of its own, then the event that ended the stream."""
        if not self._shadow:
            last = self._last
            for item in work.items:
                if item.out:
                    stream = item.stream
                    choice = new_choice(stream.choice, stream.key)
                    add_chunk_text(choice, stream.key, stream.tool, item.out)
                    chunk = {field: last[field] for field in _CHUNK_FIELDS if field in last}
                    chunk["choices"] = [choice]
                    out.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
        if work.event is not None:
            out.append(work.event.raw)
        self._observe()

    def _error_event(self) -> bytes:
        """One OpenAI-style error event; it names entity types and fields, never a value."""
        error = self.verdict.as_error(self._policy, "response")
        return error.sse_event() if error is not None else b""

    def _observe(self) -> None:
        """Each filter's time on this stream, observed once."""
        if not self._observed:
            self._observed = True
            for clock in self._clocks:
                clock.compiled.timer.observe(clock.total)


def _may_hold_placeholder(data: bytes) -> bool:
    """Could this event's JSON carry (the start of) a placeholder?"""
    return b"<" in data or (b"\\u003" in data and any(lt in data for lt in _ESCAPED_LT))
