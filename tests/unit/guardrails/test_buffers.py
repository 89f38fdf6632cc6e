"""Stream buffers: a filter's open tail releases exactly what its full holdback releases."""

from __future__ import annotations

import pytest

from gatewayd.config.schema import Mode, OnError, PolicyConfig
from gatewayd.guardrails.actions import Applier, CompiledFilter, Rules
from gatewayd.guardrails.buffers import FilterClock, InlineBuffer
from gatewayd.guardrails.placeholders import Redactions
from gatewayd.guardrails.types import InlineFilter, Span, Stage, Summary
from tests.corpus.evaluate import CORPUS, corpus_filters, load
from tests.unit.guardrails.filters.test_holdback import GROWING

POLICY = PolicyConfig(name="p", mode=Mode.REDACT, output=("f",))
FILTERS = corpus_filters()
TEXTS = [s.text for s in load(CORPUS.glob("*.jsonl"))] + GROWING


class HoldbackOnly:
    """A filter seen through the InlineFilter protocol alone, so buffers ask `holdback`."""

    def __init__(self, inner: InlineFilter) -> None:
        self.name = inner.name
        self.on_error: OnError | None = inner.on_error
        self._inner = inner

    def scan(self, text: str) -> list[Span]:
        """The inner filter's spans."""
        return self._inner.scan(text)

    def holdback(self, text: str) -> int:
        """The inner filter's full holdback."""
        return self._inner.holdback(text)


class Field:
    """Where the streamed text sits, for block messages."""

    location = "choices[0].delta.content"


def _stream(flt: InlineFilter, text: str, size: int) -> tuple[list[str], dict[str, object]]:
    """What one buffer releases piece by piece, and what the applier counted."""
    compiled = CompiledFilter(flt, POLICY)
    buffer = InlineBuffer(FilterClock(compiled), flt)
    summary = Summary()
    applier = Applier(Rules(POLICY), Stage.OUTPUT, summary, Redactions())
    released = []
    for start in range(0, len(text), size):
        out, _ = buffer.push(text[start : start + size], (), False, applier, Field())
        released.append(out)
    released.append(buffer.push("", (), True, applier, Field())[0])
    return released, summary.as_dict()


def test_the_built_in_filters_offer_an_open_tail() -> None:
    """Every built-in inline filter takes the fast path, so the test below compares two paths."""
    for flt in FILTERS:
        assert CompiledFilter(flt, POLICY).open_tail is not None
        assert CompiledFilter(HoldbackOnly(flt), POLICY).open_tail is None


@pytest.mark.parametrize("size", [1, 4, 11])
@pytest.mark.parametrize("flt", FILTERS, ids=lambda f: f.name)
def test_open_tail_releases_what_holdback_releases(flt: InlineFilter, size: int) -> None:
    """Piece by piece, a buffer using the open tail releases and finds the same as with holdback."""
    for text in TEXTS:
        assert _stream(flt, text, size) == _stream(HoldbackOnly(flt), text, size), text
