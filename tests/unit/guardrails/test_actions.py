"""Applier: what it costs to keep findings off protected ranges, and which it keeps off."""

from __future__ import annotations

from collections.abc import Sequence
from typing import overload

from gatewayd.config.schema import Mode, PolicyConfig
from gatewayd.guardrails.actions import Applier, Rules
from gatewayd.guardrails.placeholders import Range, Redactions
from gatewayd.guardrails.types import Span, Stage, Summary

POLICY = PolicyConfig(name="p", mode=Mode.REDACT, output=("f",))


class _Where:
    location = "choices[0].message.content"


class _CountingRanges(Sequence[Range]):
    """Protected ranges that count how often one of them is read."""

    def __init__(self, ranges: list[Range]) -> None:
        self._ranges = ranges
        self.reads = 0

    def __len__(self) -> int:
        return len(self._ranges)

    @overload
    def __getitem__(self, index: int) -> Range: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Range]: ...

    def __getitem__(self, index: int | slice) -> Range | Sequence[Range]:
        self.reads += 1
        return self._ranges[index]


def _apply(text: str, spans: list[Span], protected: Sequence[Range]) -> tuple[str, Summary]:
    summary = Summary()
    applier = Applier(Rules(POLICY), Stage.OUTPUT, summary, Redactions())
    return applier.apply("f", text, spans, protected, _Where())[0], summary


def _answer(n: int) -> tuple[str, list[Span], _CountingRanges]:
    """n placeholders, each followed by a new value: "<P> v <P> v ..."."""
    unit = "<EMAIL_ADDRESS_1> v "
    text = unit * n
    spans = [Span("X", i * len(unit) + 18, i * len(unit) + 19) for i in range(n)]
    protected = [(i * len(unit), i * len(unit) + 17) for i in range(n)]
    return text, spans, _CountingRanges(protected)


def test_checking_spans_against_protected_ranges_grows_as_n_log_n() -> None:
    """Twice the spans and ranges read the ranges at most about twice as often, not four times."""
    reads = []
    for n in (1000, 2000):
        text, spans, protected = _answer(n)
        _apply(text, spans, protected)
        reads.append(protected.reads)
    assert reads[1] <= 2.3 * reads[0]


def test_a_span_touching_a_protected_range_is_left_alone() -> None:
    """Spans overlapping a protected range are dropped; ones beside it are redacted."""
    text = "aa<P>bb"
    protected = [(2, 5)]
    spans = [Span("X", 0, 2), Span("Y", 4, 6), Span("X", 5, 7)]
    out, summary = _apply(text, spans, protected)
    assert out == "<X_1><P><X_2>"
    assert summary.counts[Stage.OUTPUT] == {"X": 2}
