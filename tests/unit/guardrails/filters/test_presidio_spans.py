"""Turning an analyzer's overlapping findings into one span per text range."""

from __future__ import annotations

from gatewayd.guardrails.filters.presidio_client import resolve_overlaps
from gatewayd.guardrails.types import Span


def test_disjoint_spans_are_kept_in_order_of_start() -> None:
    """Spans that do not overlap all stay, sorted by where they start."""
    late, early = Span("IBAN_CODE", 30, 40, 0.5), Span("EMAIL_ADDRESS", 0, 10, 1.0)
    assert resolve_overlaps([late, early]) == (early, late)


def test_the_higher_score_wins_an_overlap() -> None:
    """An e-mail address (1.0) beats the URL (0.5) Presidio also sees inside it."""
    email = Span("EMAIL_ADDRESS", 5, 25, 1.0)
    url = Span("URL", 14, 25, 0.5)
    assert resolve_overlaps([url, email]) == (email,)


def test_the_longer_span_wins_a_tie() -> None:
    """At equal scores the span covering more text is kept."""
    short, long = Span("URL", 4, 8, 0.5), Span("PHONE_NUMBER", 2, 12, 0.5)
    assert resolve_overlaps([short, long]) == (long,)


def test_touching_spans_do_not_overlap() -> None:
    """A span ending where the next starts leaves both in place (ends are exclusive)."""
    first, second = Span("A", 0, 5), Span("B", 5, 9)
    assert resolve_overlaps([second, first]) == (first, second)


def test_a_chain_keeps_the_best_and_whatever_it_does_not_touch() -> None:
    """Dropping a loser can leave a third span that overlapped only the loser."""
    left, middle, right = Span("A", 0, 6, 0.9), Span("B", 4, 12, 0.4), Span("C", 10, 16, 0.8)
    assert resolve_overlaps([middle, right, left]) == (left, right)
