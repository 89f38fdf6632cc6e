"""The held-back text of one output stream: one buffer per output filter.

An inline filter's buffer releases everything but the characters that could
still become part of a match: the filter's `holdback`, and any span that
reaches into them or ends too close to the end of what has arrived. As it
keeps spans whole itself, a filter's `open_tail` (the holdback before that
widening, see actions.OpenTail) is enough, when the filter has one. Spans in released text
are final, so they are acted on (counted, redacted, blocked) exactly once.

A remote filter's buffer gathers text into segments (up to a sentence end, a
newline, or about 200 characters) and each segment is scanned in one call.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence

from gatewayd.guardrails.actions import Applier, CompiledFilter, Located
from gatewayd.guardrails.placeholders import Range
from gatewayd.guardrails.types import InlineFilter, RemoteFilter, Span

# Released text kept in front of the next scan, so a word boundary or a
# look-behind at the start of the held text sees what preceded it. The
# built-in filters look back at most 40 characters (the words that make nine
# bare digits a US SSN); each push rescans this much, so it stays small.
CONTEXT = 48
# A match is final only once this many characters follow it: patterns end
# in look-aheads such as "not followed by a comma and a digit".
LOOKAHEAD = 2
SEGMENT = 200
_SENTENCE_END = re.compile(r"[.!?](?=\s)|\n")


class FilterClock:
    """Time one filter spent on one stream, observed once when the stream ends."""

    __slots__ = ("compiled", "total")

    def __init__(self, compiled: CompiledFilter) -> None:
        self.compiled = compiled
        self.total = 0.0


class InlineBuffer:
    """Text an inline filter holds back until no later text can change its verdict."""

    __slots__ = ("_context", "_filter", "_held", "_protected", "_tail", "clock")

    def __init__(self, clock: FilterClock, inline: InlineFilter) -> None:
        self.clock = clock
        self._filter = inline
        self._tail = clock.compiled.open_tail or inline.holdback
        self._held = ""
        self._protected: Sequence[Range] = ()
        self._context = ""

    def push(
        self,
        text: str,
        protected: Sequence[Range],
        final: bool,
        applier: Applier,
        where: Located,
    ) -> tuple[str, Sequence[Range]]:
        """Take new text; return the text released now (after actions) and its protected ranges."""
        if self._held:
            text, protected = _join(self._held, self._protected, text, protected)
        if not text:
            return text, protected
        context = self._context
        n = len(context)
        scanned = context + text
        size = len(scanned)
        start = time.perf_counter()
        spans = self._filter.scan(scanned)
        limit = size if final else max(n, size - self._tail(scanned))
        self.clock.total += time.perf_counter() - start
        lo = hi = 0
        if spans:
            # Spans are sorted and disjoint: those inside the context were
            # decided when it was released, then come the ones released now.
            count = len(spans)
            while lo < count and spans[lo].end <= n:
                lo += 1
            if lo < count and spans[lo].start < n:
                # A match the released text turned out to begin: too late for
                # its released part, not for the rest.
                first = spans[lo]
                spans = [Span(first.entity, n, first.end, first.score), *spans[lo + 1 :]]
                count = len(spans)
                lo = 0
            hi = lo
            settled = size if final else size - LOOKAHEAD
            while hi < count:
                span = spans[hi]
                if span.start >= limit:
                    break
                if span.end > limit or span.end > settled:
                    # It may still grow, or a look-ahead may still undo it: hold it whole.
                    limit = span.start
                    break
                hi += 1
        cut = limit - n
        released = text[:cut]
        self._held = text[cut:]
        head: Sequence[Range] = ()
        if protected:
            head, self._protected = _split(protected, cut)
        else:
            self._protected = ()
        if cut:
            self._context = scanned[max(0, limit - CONTEXT) : limit]
        if lo == hi:
            return released, head
        return applier.apply(self.clock.compiled.name, released, spans[lo:hi], head, where, n)


class RemoteBuffer:
    """Text a remote filter gathers into segments worth one call each."""

    __slots__ = ("_held", "_protected", "clock", "filter")

    def __init__(self, clock: FilterClock, remote: RemoteFilter) -> None:
        self.clock = clock
        self.filter = remote
        self._held = ""
        self._protected: Sequence[Range] = ()

    def take(
        self, text: str, protected: Sequence[Range], final: bool
    ) -> tuple[str, Sequence[Range]]:
        """Take new text; return the segment ready to scan ("" while it still grows)."""
        text, protected = _join(self._held, self._protected, text, protected)
        if final:
            cut = len(text)
        else:
            cut = 0
            for match in _SENTENCE_END.finditer(text):
                cut = match.end()
            if not cut and len(text) >= SEGMENT:
                # A long run without a sentence end: cut after its last space
                # so no word (or value) is split between two calls.
                cut = text.rfind(" ") + 1 or len(text)
        self._held = text[cut:]
        head, self._protected = _split(protected, cut)
        return text[:cut], head


def _join(
    held: str, held_protected: Sequence[Range], text: str, protected: Sequence[Range]
) -> tuple[str, Sequence[Range]]:
    if not held:
        return text, protected
    if protected:
        shift = len(held)
        held_protected = [*held_protected, *((s + shift, e + shift) for s, e in protected)]
    return held + text, held_protected


def _split(protected: Sequence[Range], cut: int) -> tuple[Sequence[Range], Sequence[Range]]:
    """Protected ranges before `cut`, and those after it moved to start from it."""
    if not protected:
        return (), ()
    head = [(s, min(e, cut)) for s, e in protected if s < cut]
    tail = [(max(s, cut) - cut, e - cut) for s, e in protected if e > cut]
    return head, tail
