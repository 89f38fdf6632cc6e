"""Helpers every built-in filter shares: overlap resolution and tail holdback."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from operator import attrgetter

from gatewayd.guardrails.types import Span

_START = attrgetter("start")
# What resolve marks a kept span's characters with: its first, the others.
_FIRST = b"\x02"
_INSIDE = b"\x01"


def resolve(candidates: list[Span], rank: Mapping[str, int]) -> list[Span]:
    """Order spans by start and drop overlaps: the longer span wins, then the higher rank."""
    if len(candidates) < 2:
        return candidates
    ordered = sorted(candidates, key=_START)
    # Disjoint is the usual case: one plain loop, no generator, decides it.
    end = 0
    for span in ordered:
        if span.start < end:
            break
        end = span.end
    else:
        return ordered
    by_strength = sorted(
        candidates, key=lambda s: (s.start - s.end, -rank.get(s.entity, 0), s.start)
    )
    # Longest first, so every kept span is at least as long as the one being
    # tried: one overlapping it holds its first or its last character (an
    # empty one overlaps only a span it is strictly inside). The kept spans
    # are disjoint, so marking what they cover costs at most the text's
    # length in all, where comparing each with every kept one cost findings
    # squared.
    covered = bytearray(max(span.end for span in candidates) + 1)
    kept: list[Span] = []
    for span in by_strength:
        start, end = span.start, span.end
        if end > start:
            if covered[start] or covered[end - 1]:
                continue
            covered[start:end] = _FIRST + _INSIDE * (end - start - 1)
        elif covered[start] == _INSIDE[0]:
            continue
        kept.append(span)
    kept.sort(key=_START)
    return kept


def clear_of_findings(text: str, held: int, scan: Callable[[str], list[Span]]) -> int:
    """`held`, widened so the release point does not fall inside a finding `scan` makes.

    Tails look only for what could still grow; a tail may begin inside a
    finding that is already complete (the digits after an IBAN's letters, the
    dashes ending a private key), and releasing there would cut the finding.
    A cut at either end of the text cuts nothing, so then nothing is scanned.
    """
    size = len(text)
    if not 0 < held < size:
        return held
    cut = size - held
    for span in scan(text):
        if span.start < cut < span.end:
            return size - span.start
    return held


def tail_holdback(
    tail: re.Pattern[str],
    text: str,
    window: int,
    spaced: int | None = None,
    runs: tuple[str, ...] = (),
) -> int:
    """Length of the longest suffix of `text` that `tail` (anchored at the end) matches.

    No match of `tail` is longer than `window`, so the search starts that far
    from the end (look-behinds still see what precedes). When `spaced` is
    given, only matches at most that long may contain a space or newline, so
    the search starts at the last one of those if that is closer to the end.
    When `runs` is given, every match is made of the characters of one of
    those strings, so it starts within the text's trailing run of them, found
    by str.rstrip: usually a few characters, where the regex would try every
    position of the window.
    """
    size = len(text)
    start = max(size - window, 0)
    if spaced is not None and size - spaced > start:
        space = max(text.rfind(" "), text.rfind("\n"))
        start = max(start, min(space + 1, size - spaced))
    if runs:
        recent = text[start:]
        longest = 0
        for chars in runs:
            longest = max(longest, len(recent) - len(recent.rstrip(chars)))
        if not longest:
            # Only an empty match could end the text, and it holds nothing.
            return 0
        start = size - longest
    match = tail.search(text, start)
    return size - match.start() if match else 0


def fold_case(text: str) -> str:
    """`text` lower-cased, character for character, so offsets stay valid.

    Case-insensitive filters match lower-case patterns against this instead
    of using IGNORECASE, which keeps the regex engine from skipping ahead on
    first characters and so is several times slower. The rare character whose
    lower case is longer (Turkish dotted I) is left as it is.
    """
    lowered = text.lower()
    if len(lowered) == len(text):
        return lowered
    return "".join(low if len(low := ch.lower()) == 1 else ch for ch in text)
