"""A policy compiled with its filters: the guardrails of whole requests and answers.

    request: payload (payload.py, shaped by its endpoint) -> unknown fields per `unknown`
             -> input filters in order, each on the text the previous left
             -> verdict; the body serialised again from what was read
    answer:  texts (the endpoint's answer shape) -> output filters, this request's
             placeholders protected -> restore them -> verdict, bytes
    stream:  Guard.stream() -> StreamGuard (streaming.py), event by event

Inline filters are called directly; a remote filter gets every text of the
payload in one awaited call, and its failure is settled by on_error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec

import orjson

from gatewayd.config.schema import Mode, PolicyConfig
from gatewayd.errors import FilterError
from gatewayd.guardrails.actions import Applier, CompiledFilter, Rules
from gatewayd.guardrails.endpoints import Endpoint
from gatewayd.guardrails.payload import Payload
from gatewayd.guardrails.placeholders import Range, Redactions
from gatewayd.guardrails.shapes import TextSlot, walk
from gatewayd.guardrails.streaming import StreamGuard
from gatewayd.guardrails.types import (
    ALLOW,
    Filter,
    InlineFilter,
    Span,
    Stage,
    Summary,
    Verdict,
)
from gatewayd.guardrails.unknown import unknown_verdict
from gatewayd.observability.metrics import GUARDRAIL_OFF_LOOP


@dataclass(slots=True)
class RequestResult:
    """The input stage's outcome; the answer's stage reads its redactions and summary."""

    verdict: Verdict
    # What goes upstream: the parsed body serialised again, never bytes unread.
    body: bytes
    redactions: Redactions
    summary: Summary
    # None for an endpoint the guard does not know (passed with unknown=allow).
    endpoint: Endpoint | None = None


@dataclass(slots=True)
class ResponseResult:
    """The output stage's outcome for a whole answer."""

    verdict: Verdict
    body: bytes


class _Texts:
    """The texts of one payload as the filters change them."""

    __slots__ = ("long", "originals", "protected", "slots", "texts")

    def __init__(self, slots: list[TextSlot]) -> None:
        self.slots = slots
        self.originals = [slot.text for slot in slots]
        self.texts = list(self.originals)
        self.protected: list[Sequence[Range]] = [()] * len(slots)
        # Measured once: every step over these texts goes off the loop, or none.
        self.long = sum(map(len, self.originals)) >= OFF_LOOP_CHARS

    def protect(self, redactions: Redactions) -> None:
        """Keep output filters off the request's own placeholders."""
        for i, text in enumerate(self.texts):
            self.protected[i] = redactions.issued(text)

    def restore(self, redactions: Redactions) -> None:
        """Turn the request's placeholders back into values, escaped where the text is JSON."""
        texts, slots = self.texts, self.slots
        for i, text in enumerate(texts):
            texts[i] = redactions.restore(text, slots[i].json)

    def inline(self, compiled: CompiledFilter, inline: InlineFilter, applier: Applier) -> None:
        """Scan every text with an inline filter and act on what it finds."""
        start = time.perf_counter()
        scan = inline.scan
        texts, protected, slots = self.texts, self.protected, self.slots
        # Tool schemas repeat their keys and words ("type", "string", ...) and
        # a filter is a function of the text: a text found clean once is clean.
        clean: set[str] = set()
        for i, text in enumerate(texts):
            if text in clean:
                continue
            if spans := scan(text):
                texts[i], protected[i] = applier.apply(
                    compiled.name, text, spans, protected[i], slots[i]
                )
            else:
                clean.add(text)
        compiled.timer.observe(time.perf_counter() - start)

    def apply(self, name: str, found: Sequence[Sequence[Span]], applier: Applier) -> None:
        """Act on a remote filter's spans, one list per text."""
        texts, protected, slots = self.texts, self.protected, self.slots
        for i, spans in enumerate(found):
            if spans:
                texts[i], protected[i] = applier.apply(
                    name, texts[i], spans, protected[i], slots[i]
                )

    def write(self) -> bool:
        """Put changed texts back into the document; False when none changed."""
        changed = False
        for slot, original, text in zip(self.slots, self.originals, self.texts, strict=True):
            if text is not original:
                slot.write(text)
                changed = True
        return changed


class Guard:
    """One policy compiled with its filters; built once per config generation."""

    __slots__ = (
        "_input",
        "_input_remote",
        "_output",
        "_output_remote",
        "_restore",
        "_rules",
        "policy",
    )

    def __init__(self, policy: PolicyConfig, filters: Mapping[str, Filter]) -> None:
        self.policy = policy
        active = policy.mode is not Mode.OFF
        self._rules = Rules(policy)
        self._input = (
            tuple(CompiledFilter(filters[name], policy) for name in policy.input) if active else ()
        )
        self._output = (
            tuple(CompiledFilter(filters[name], policy) for name in policy.output) if active else ()
        )
        self._input_remote = any(f.remote is not None for f in self._input)
        self._output_remote = any(f.remote is not None for f in self._output)
        self._restore = active and policy.restore

    def wants_answer(self, request: RequestResult) -> bool:
        """Whether the answer to `request` has anything for this guard to do: output
        filters, or placeholders to restore. If not, the proxy relays it untouched.
        An answer with no model text (metadata, audio) has nothing to read."""
        endpoint = request.endpoint
        if endpoint is None or (endpoint.answer is None and not endpoint.opaque_answer):
            return False
        return bool(self._output) or (self._restore and bool(request.redactions))

    def unknown_endpoint(self, raw: bytes) -> RequestResult:
        """A request to an endpoint no shape describes: refused, or passed unread."""
        summary = Summary()
        verdict = self._unknown(Stage.INPUT, ("unknown endpoint",), summary)
        return RequestResult(verdict, raw, Redactions(), summary)

    def _unknown(self, stage: Stage, fields: Sequence[str], summary: Summary) -> Verdict:
        policy = self.policy
        return unknown_verdict(policy.name, policy.unknown, stage, fields, summary)

    async def inspect_request(self, raw: bytes, payload: Payload) -> RequestResult:
        """Run the input filters over a parsed request; redactions change it in place."""
        endpoint = payload.endpoint
        summary = Summary()
        redactions = Redactions()
        if payload.unknown:
            verdict = self._unknown(Stage.INPUT, payload.unknown, summary)
            if not verdict.allowed:
                return RequestResult(verdict, raw, redactions, summary, endpoint)
        slots = payload.slots if self._input else None
        if not slots:
            return RequestResult(ALLOW, payload.dump(), redactions, summary, endpoint)
        texts = _Texts(slots)
        await _scan(texts, _reserve, redactions, texts.texts)
        applier = Applier(self._rules, Stage.INPUT, summary, redactions)
        unavailable = None
        if self._input_remote:
            unavailable = await self._run_remote(self._input, texts, applier, summary)
        else:
            await _scan(texts, self._run, self._input, texts, applier)
        verdict = _verdict(applier, unavailable)
        if verdict is not ALLOW:
            return RequestResult(verdict, raw, redactions, summary, endpoint)
        texts.write()
        # The body goes upstream as what was read, serialised again even when
        # nothing changed (under a microsecond a KB): raw bytes could say more
        # than the parsed document did, such as a key given twice, which one
        # parser reads as its first value and another as its last.
        return RequestResult(verdict, payload.dump(), redactions, summary, endpoint)

    async def inspect_response(
        self, raw: bytes, doc: dict[str, Any], request: RequestResult
    ) -> ResponseResult:
        """Run the output filters over a whole parsed answer, then restore placeholders."""
        endpoint = request.endpoint
        if not self.wants_answer(request) or endpoint is None:
            return ResponseResult(ALLOW, raw)
        if endpoint.answer is None:
            # The answer is a file the gateway cannot read.
            verdict = self._unknown(Stage.OUTPUT, ("a file",), request.summary)
            return ResponseResult(verdict, raw)
        walked = walk(endpoint.answer, doc)
        if walked.unknown:
            verdict = self._unknown(Stage.OUTPUT, walked.unknown, request.summary)
            if not verdict.allowed:
                return ResponseResult(verdict, raw)
        slots = walked.slots
        if not slots:
            return ResponseResult(ALLOW, raw)
        return await self._answer(_Texts(slots), raw, doc, request)

    async def _answer(
        self, texts: _Texts, raw: bytes, doc: dict[str, Any], request: RequestResult
    ) -> ResponseResult:
        redactions = request.redactions
        restore = self._restore and bool(redactions)
        # Snapshot first: what the output filters redact is never restored.
        issued = redactions.snapshot() if restore else None
        verdict = ALLOW
        if self._output:
            if issued is not None:
                await _scan(texts, texts.protect, issued)
            applier = Applier(self._rules, Stage.OUTPUT, request.summary, redactions)
            unavailable = None
            if self._output_remote:
                unavailable = await self._run_remote(self._output, texts, applier, request.summary)
            else:
                await _scan(texts, self._run, self._output, texts, applier)
            verdict = _verdict(applier, unavailable)
        if verdict is not ALLOW:
            return ResponseResult(verdict, raw)
        if issued is not None:
            # Thousands of placeholders in a long answer: as long as a scan.
            await _scan(texts, texts.restore, issued)
        if not texts.write():
            return ResponseResult(verdict, raw)
        return ResponseResult(verdict, orjson.dumps(doc))

    def stream(self, request: RequestResult) -> StreamGuard:
        """A guard for one streamed (SSE) answer to `request`."""
        return StreamGuard(
            self._output,
            self._rules,
            request.redactions if self._restore else None,
            request.summary,
            request.endpoint,
            self.policy.unknown,
        )

    @staticmethod
    def _run(filters: tuple[CompiledFilter, ...], texts: _Texts, applier: Applier) -> None:
        for compiled in filters:
            if compiled.inline is not None:
                texts.inline(compiled, compiled.inline, applier)
            if applier.blocked:
                return

    @staticmethod
    async def _run_remote(
        filters: tuple[CompiledFilter, ...], texts: _Texts, applier: Applier, summary: Summary
    ) -> str | None:
        """Like `_run` with remote filters among them; returns a failed filter's name
        when its on_error refuses the payload."""
        for compiled in filters:
            if compiled.inline is not None:
                await _scan(texts, texts.inline, compiled, compiled.inline, applier)
            elif compiled.remote is not None:
                start = time.perf_counter()
                try:
                    found = await compiled.remote.scan_batch(texts.texts)
                except FilterError as exc:
                    compiled.timer.observe(time.perf_counter() - start)
                    if compiled.failed(exc, summary):
                        return compiled.name
                    continue
                texts.apply(compiled.name, found, applier)
                compiled.timer.observe(time.perf_counter() - start)
            if applier.blocked:
                return None
        return None


# Texts this long in all (characters, over one payload) are scanned in a
# worker thread. The built-in filters read hostile text at 0.6-1 MB/s (pii
# and secrets take 25 ms for 16 Ki characters of the worst), ordinary text
# at about 30 MB/s (0.6 ms); the hop to a thread costs some 90 us, too much
# for the common small request, little beside a scan this long.
OFF_LOOP_CHARS = 16 * 1024
_P = ParamSpec("_P")


async def _scan(
    texts: _Texts, run: Callable[_P, None], *args: _P.args, **kwargs: _P.kwargs
) -> None:
    """`run` over `texts` (the inline filters, restoring): here, or in a thread if they are long.

    A thread keeps the loop serving because each regex search of the built-in
    filters is bounded (re holds the GIL through one search): the loop gets
    the GIL back within the switch interval. asyncio.to_thread uses the loop's
    own executor, so the thread pool lives and ends with each worker's loop,
    and the request's context variables go along into the thread.
    """
    if not texts.long:
        run(*args, **kwargs)
        return
    GUARDRAIL_OFF_LOOP.inc()
    await asyncio.to_thread(run, *args, **kwargs)


def _reserve(redactions: Redactions, texts: list[str]) -> None:
    for text in texts:
        redactions.reserve(text)


def _verdict(applier: Applier, unavailable: str | None) -> Verdict:
    if unavailable is not None:
        return Verdict(unavailable=unavailable)
    if applier.blocked:
        blocked, fields = applier.verdict_parts()
        return Verdict(blocked=blocked, blocked_fields=fields)
    return ALLOW
