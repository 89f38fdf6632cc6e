"""The output guardrails of a streamed (SSE) answer, event by event.

Each channel of text (extract.py: a chat choice's content, refusal,
reasoning, audio transcript, each tool call's arguments; a Responses event's
`delta`) is its own stream: each output filter holds back only what could
still become a match, with this request's placeholders protected; then the
placeholders are restored (holding back only a partial one, escaped for JSON
in arguments) and the rest goes out in the same event. Held text goes out in
a later event of its stream, in the event carrying the choice's
`finish_reason` (chat) or in a delta just before the channel's `.done` event
(Responses), in a chunk of its own before `data: [DONE]`, or at `finish()`.
Every other string of an event is read whole, through the same filters.

Every event is checked against its shape (endpoints.py): one that is not
JSON, of an unknown type or with unknown fields is refused per the policy's
`unknown`, which ends the stream with an error event.

Events nobody changed are forwarded as the bytes that came; a changed one is
re-serialised. A block ends the stream with one OpenAI-style error event.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import orjson

from gatewayd.config.schema import OnError
from gatewayd.errors import FilterError
from gatewayd.guardrails.actions import Applier, CompiledFilter, Rules
from gatewayd.guardrails.buffers import FilterClock, InlineBuffer, RemoteBuffer
from gatewayd.guardrails.endpoints import (
    DELTA_EVENTS,
    JSON_DELTA_EVENTS,
    RESPONSE_EVENTS,
    Endpoint,
    Stream,
)
from gatewayd.guardrails.extract import (
    JSON_CHANNELS,
    MESSAGE,
    add_chunk_text,
    chunk_location,
    chunk_texts,
    new_choice,
)
from gatewayd.guardrails.placeholders import Range, Redactions, StreamRestorer
from gatewayd.guardrails.shapes import TextSlot, walk
from gatewayd.guardrails.sse import Event, SSEParser, encode, read_fields
from gatewayd.guardrails.types import ALLOW, Stage, Summary, Verdict
from gatewayd.guardrails.unknown import unknown_verdict

_DONE = b"[DONE]"
# "<" as JSON may also escape it (Go's encoding/json does).
_ESCAPED_LT = (b"\\u003c", b"\\u003C")
# Fields of the last chunk copied into a chunk made to carry held-back text.
_CHUNK_FIELDS = ("id", "object", "created", "model", "system_fingerprint")
# Fields of a Responses delta event copied into one made to carry held text.
_DELTA_FIELDS = ("item_id", "output_index", "content_index", "summary_index", "sequence_number")
WHOLE = "whole"
"""The channel of a string read whole, not continued by later events."""


class _Stream:
    """One stream of text within the answer, with its buffers."""

    __slots__ = (
        "applier",
        "buffers",
        "channel",
        "choice",
        "location",
        "restorer",
        "template",
        "tool",
    )

    def __init__(
        self,
        choice: int,
        channel: str,
        tool: int,
        location: str,
        restorer: StreamRestorer | None,
        buffers: list[InlineBuffer | RemoteBuffer],
        applier: Applier,
    ) -> None:
        self.choice = choice
        self.channel = channel
        self.tool = tool
        self.location = location
        self.restorer = restorer
        self.buffers = buffers
        self.applier = applier
        # Responses: the stream's last delta event, the model for one that
        # carries its held text.
        self.template: dict[str, Any] | None = None


class _Item:
    """One piece of text to push through a stream, and where its output goes."""

    __slots__ = ("choice", "emit", "final", "holder", "key", "out", "slot", "stream", "text")

    def __init__(
        self,
        stream: _Stream,
        text: str,
        final: bool,
        holder: dict[str, Any] | None = None,
        choice: dict[str, Any] | None = None,
        key: str = "",
    ) -> None:
        self.stream = stream
        self.text = text
        self.final = final
        # The dict the text came in, under `key`; None when held text is put
        # into `choice` (or a chunk of its own, if that is None too).
        self.holder = holder
        self.key = key
        self.choice = choice
        # A string read whole, written back through its slot.
        self.slot: TextSlot | None = None
        # Responses: held text goes out in this event of its own, before the
        # event that ended its channel.
        self.emit: dict[str, Any] | None = None
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
        "_chunk",
        "_clocks",
        "_holding",
        "_last",
        "_observed",
        "_parser",
        "_passthrough",
        "_policy",
        "_quiet",
        "_redactions",
        "_remote",
        "_responses",
        "_restore_only",
        "_shadow",
        "_stopped",
        "_streams",
        "_summary",
        "_unknown",
        "verdict",
    )

    def __init__(
        self,
        filters: tuple[CompiledFilter, ...],
        rules: Rules,
        redactions: Redactions | None,
        summary: Summary,
        endpoint: Endpoint | None = None,
        unknown: OnError = "block",
    ) -> None:
        self.verdict: Verdict = ALLOW
        self._policy = rules.policy
        self._summary = summary
        # A snapshot: what the output filters redact is never restored.
        self._redactions = redactions.snapshot() if redactions else None
        shared = redactions if redactions is not None else Redactions()
        self._applier = Applier(rules, Stage.OUTPUT, summary, shared)
        # Responses streams repeat their deltas whole (`.done` events, the
        # final response): filtered alike, not counted again.
        self._quiet = Applier(rules, Stage.OUTPUT, summary, shared, count=False)
        self._responses = endpoint is not None and endpoint.stream is Stream.RESPONSES
        self._chunk = endpoint.chunk if endpoint is not None else None
        self._unknown = unknown
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
        self._streams: dict[tuple[Any, ...], _Stream] = {}
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

    def _prepare(self, event: Event) -> bytes | _Work | None:
        """The pieces of text an event carries, its bytes if it carries none,
        or None once the stream is refused."""
        if self._stopped:
            return None
        event = read_fields(event)
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
            doc = None
        if not isinstance(doc, dict):
            return self._unreadable(event, ("an event that is not JSON",))
        if self._responses:
            return self._prepare_responses(event, doc)
        if self._chunk is None:
            return self._unreadable(event, ("a stream this endpoint does not send",))
        walked = walk(self._chunk, doc)
        if walked.unknown:
            return self._unreadable(event, walked.unknown)
        items: list[_Item] = []
        streamed: set[tuple[int, str | int]] = set()
        choices = doc.get("choices")
        if choices:
            self._last = doc
            for position, choice in enumerate(choices):
                index = choice.get("index", position)
                if not isinstance(index, int):
                    index = position
                final = choice.get("finish_reason") is not None
                for holder, key, channel, tool in chunk_texts(choice):
                    stream = self._stream((index, channel, tool), index, channel, tool)
                    items.append(_Item(stream, holder[key], final, holder, choice, key))
                    streamed.add((id(holder), key))
                if final:
                    self._finish_choice(index, choice, items)
        self._read_whole(walked.slots, streamed, items, self._applier)
        if not items:
            return event.raw
        return _Work(event, doc, items)

    def _prepare_responses(self, event: Event, doc: dict[str, Any]) -> bytes | _Work | None:
        """A Responses event: a delta continues its channel, a `.done` ends it."""
        kind = doc.get("type")
        shape = RESPONSE_EVENTS.get(kind) if isinstance(kind, str) else None
        if shape is None or not isinstance(kind, str):
            return self._unreadable(event, ("an event of an unknown type",))
        walked = walk(shape, doc)
        if walked.unknown:
            return self._unreadable(event, walked.unknown)
        base, _, phase = kind.rpartition(".")
        items: list[_Item] = []
        streamed: set[tuple[int, str | int]] = set()
        if base in DELTA_EVENTS:
            ident = (base, *(doc.get(field) for field in _DELTA_FIELDS[:4]))
            if phase == "delta" and isinstance(doc.get("delta"), str):
                stream = self._streams.get(ident)
                if stream is None:
                    where = f"output[{doc.get('output_index')}].{DELTA_EVENTS[base] or 'delta'}"
                    stream = self._stream(ident, 0, base, MESSAGE, where)
                stream.template = doc
                items.append(_Item(stream, doc["delta"], False, doc, None, "delta"))
                streamed.add((id(doc), "delta"))
            elif phase == "done" and (stream := self._streams.pop(ident, None)) is not None:
                item = _Item(stream, "", True)
                item.emit = _delta_event(stream, base)
                items.append(item)
        self._read_whole(walked.slots, streamed, items, self._quiet)
        if not items:
            return event.raw
        return _Work(event, doc, items)

    def _read_whole(
        self,
        slots: list[TextSlot],
        streamed: set[tuple[int, str | int]],
        items: list[_Item],
        applier: Applier,
    ) -> None:
        """The event's other strings, each read whole as a stream of one piece."""
        for slot in slots:
            if (id(slot.parent), slot.key) in streamed:
                continue
            stream = self._new_stream(0, WHOLE, MESSAGE, slot.location, slot.json, applier)
            item = _Item(stream, slot.text, True)
            item.slot = slot
            items.append(item)

    def _unreadable(self, event: Event, fields: Sequence[str]) -> bytes | None:
        """An event the policy cannot read: the stream ends here, or it passes unread.
        Restoring only, nothing could be missed in it but a placeholder left as written."""
        unknown = "allow" if self._restore_only else self._unknown
        verdict = unknown_verdict(self._policy, unknown, Stage.OUTPUT, fields, self._summary)
        if verdict.allowed:
            return event.raw
        self.verdict = verdict
        self._stopped = True
        return None

    def _stream(
        self,
        ident: tuple[Any, ...],
        choice: int,
        channel: str,
        tool: int,
        location: str | None = None,
    ) -> _Stream:
        stream = self._streams.get(ident)
        if stream is None:
            json = channel in JSON_CHANNELS or channel in JSON_DELTA_EVENTS
            if location is None:
                location = chunk_location(choice, channel, tool)
            stream = self._streams[ident] = self._new_stream(
                choice, channel, tool, location, json, self._applier
            )
        return stream

    def _new_stream(
        self, choice: int, channel: str, tool: int, location: str, json: bool, applier: Applier
    ) -> _Stream:
        buffers: list[InlineBuffer | RemoteBuffer] = []
        for clock in self._clocks:
            inline, remote = clock.compiled.inline, clock.compiled.remote
            if inline is not None:
                buffers.append(InlineBuffer(clock, inline))
            elif remote is not None:
                buffers.append(RemoteBuffer(clock, remote))
        restorer = self._redactions.restorer(json) if self._redactions is not None else None
        return _Stream(choice, channel, tool, location, restorer, buffers, applier)

    def _finish_choice(self, index: int, choice: dict[str, Any], items: list[_Item]) -> None:
        """The choice ended: its streams release everything, into this event."""
        in_event = {id(item.stream) for item in items}
        for key in [key for key in self._streams if key[0] == index]:
            stream = self._streams.pop(key)
            if id(stream) not in in_event:
                items.append(_Item(stream, "", True, None, choice))

    def _flush(self) -> list[_Item]:
        items = []
        for ident, stream in self._streams.items():
            item = _Item(stream, "", True)
            if self._responses:
                item.emit = _delta_event(stream, str(ident[0]))
            items.append(item)
        self._streams.clear()
        return items

    def _push(self, works: list[bytes | _Work | None]) -> int:
        """Run every piece through its stream; returns how many events to send."""
        for n, work in enumerate(works):
            if work is None:
                return n
            if isinstance(work, _Work):
                for item in work.items:
                    stream, final = item.stream, item.final
                    text = self._advance(stream, item.text, self._issued(item.text), final, 0)[0]
                    item.out = self._restore(stream, text, final)
                    if self._stopped:
                        return n
        if self._restore_only:
            self._holding = any(
                stream.restorer is not None and stream.restorer.holding
                for stream in self._streams.values()
            )
        return len(works)

    async def _push_remote(self, works: list[bytes | _Work | None]) -> int:
        """Like `_push`, awaiting each remote filter's call on a segment once it is ready."""
        for n, work in enumerate(works):
            if work is None:
                return n
            if isinstance(work, _Work):
                for item in work.items:
                    stream, final = item.stream, item.final
                    text, protected = item.text, self._issued(item.text)
                    text, protected, i = self._advance(stream, text, protected, final, 0)
                    while i < len(stream.buffers) and not self._stopped:
                        text, protected = await self._scan_remote(
                            stream.buffers[i], text, protected, final, stream
                        )
                        text, protected, i = self._advance(stream, text, protected, final, i + 1)
                    item.out = self._restore(stream, text, final)
                    if self._stopped:
                        return n
        return len(works)

    def _issued(self, text: str) -> Sequence[Range]:
        """The request's own placeholders in `text`, which output filters leave be."""
        return self._redactions.issued(text) if self._redactions is not None else ()

    @staticmethod
    def _restore(stream: _Stream, text: str, final: bool) -> str:
        if stream.restorer is None:
            return text
        return stream.restorer.push(text, final)

    def _advance(
        self, stream: _Stream, text: str, protected: Sequence[Range], final: bool, i: int
    ) -> tuple[str, Sequence[Range], int]:
        """Push text through the inline buffers from the i-th, up to the next remote one."""
        buffers = stream.buffers
        applier = stream.applier
        while i < len(buffers):
            buffer = buffers[i]
            if isinstance(buffer, RemoteBuffer):
                return text, protected, i
            if not text and not final:
                # Nothing new reaches the filters after this one either.
                return text, protected, len(buffers)
            text, protected = buffer.push(text, protected, final, applier, stream)
            if applier.blocked:
                self._block(applier)
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
        applier = stream.applier
        text, protected = applier.apply(clock.compiled.name, segment, found[0], head, stream)
        if applier.blocked:
            self._block(applier)
        return text, protected

    def _block(self, applier: Applier) -> None:
        blocked, fields = applier.verdict_parts()
        self.verdict = Verdict(blocked=blocked, blocked_fields=fields)
        self._stopped = True

    def _render(self, works: list[bytes | _Work | None], count: int) -> bytes:
        """The bytes of the first `count` events, then the error event if the stream stopped."""
        out: list[bytes] = []
        for work in works[:count]:
            if work is None:
                break
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
        before: list[bytes] = []
        for item in items:
            if item.slot is not None:
                if item.out != item.text:
                    item.slot.write(item.out)
                    changed = True
            elif item.holder is not None:
                if item.out != item.text:
                    item.holder[item.key] = item.out
                    changed = True
            elif item.emit is not None:
                if item.out:
                    before.append(_event(item.emit, item.out))
            elif item.out and item.choice is not None:
                stream = item.stream
                add_chunk_text(item.choice, stream.channel, stream.tool, item.out)
                changed = True
        own = encode(event.other, orjson.dumps(doc)) if changed else event.raw
        return b"".join((*before, own)) if before else own

    def _render_flush(self, work: _Work, out: list[bytes]) -> None:
        """Held text in chunks of its own, then the event that ended the stream."""
        if not self._shadow:
            last = self._last
            for item in work.items:
                if not item.out:
                    continue
                if item.emit is not None:
                    out.append(_event(item.emit, item.out))
                    continue
                stream = item.stream
                choice = new_choice(stream.choice, stream.channel)
                add_chunk_text(choice, stream.channel, stream.tool, item.out)
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


def _delta_event(stream: _Stream, kind: str) -> dict[str, Any]:
    """A Responses delta event of `stream`'s channel, to carry its held text."""
    template = stream.template or {}
    event: dict[str, Any] = {"type": f"{kind}.delta"}
    for field in _DELTA_FIELDS:
        if field in template:
            event[field] = template[field]
    return event


def _event(doc: dict[str, Any], delta: str) -> bytes:
    """A Responses delta event carrying `delta`, named by its type as the API names them."""
    doc["delta"] = delta
    return encode([b"event: " + str(doc["type"]).encode()], orjson.dumps(doc))


def _may_hold_placeholder(data: bytes) -> bool:
    """Could this event's JSON carry (the start of) a placeholder?"""
    return b"<" in data or (b"\\u003" in data and any(lt in data for lt in _ESCAPED_LT))
