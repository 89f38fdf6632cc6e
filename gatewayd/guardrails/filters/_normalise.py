"""The text a model reads, for detectors written for ASCII: a normalised view.

A model reads `０９０-１２３４` (fullwidth, from a Japanese keyboard) as a
phone number, `4111 1111 1111 1111` with no-break spaces (from copy-paste)
as a card, and `pass\u200bword` as "password"; a regex for ASCII sees none
of them. So the built-in detectors scan a view of the text in which each
character is replaced on its own by

- nothing, when it is invisible (format characters such as zero-width
  spaces, joiners, soft hyphens, bidi marks; variation selectors);
- a space or a newline, when it is one (no-break, thin, ideographic...);
- its ASCII digit, when it is a decimal digit of any script (Arabic-Indic,
  Devanagari, fullwidth, mathematical...);
- its NFKC form, when that is ASCII (fullwidth letters and `＠`, ligatures
  such as `ﬁ`, `…`, circled and superscript digits).

Anything else is left as it is: NFKC forms that are not ASCII help no ASCII
detector, and leaving them keeps the view as close to the text as possible.
Findings are mapped back to the text, so a redaction replaces exactly what
the user typed, invisible characters inside the value included.

Cost: an ASCII text (most of them) is its own view, decided by
`str.isascii`; any other is searched once for a character to fold, with one
character class of the Basic Multilingual Plane (sre's fast bitmap) plus the
astral planes as one range, looked up per character found there.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable

from gatewayd.guardrails.types import Span

# Invisible characters that are not format (Cf) characters: the combining
# grapheme joiner and the variation selectors.
_INVISIBLE = {0x034F, *range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0)}
# Where folded characters are; the rest of Unicode has none.
_PLANES = (range(0x80, 0x20000), range(0xE0000, 0xE01F0))


def _fold(ch: str) -> str | None:
    """What `ch` becomes in the view, or None when it stays."""
    category = unicodedata.category(ch)
    if category == "Cf" or ord(ch) in _INVISIBLE:
        return ""
    if category == "Zs":
        return " "
    if category in ("Zl", "Zp") or ch == "\x85":
        return "\n"
    digit = unicodedata.decimal(ch, None)
    if digit is not None:
        return str(digit)
    nfkc = unicodedata.normalize("NFKC", ch)
    return nfkc if nfkc != ch and nfkc.isascii() else None


def _fold_table() -> dict[str, str]:
    table = {}
    for plane in _PLANES:
        for code in plane:
            ch = chr(code)
            if unicodedata.category(ch) != "Cn" and (folded := _fold(ch)) is not None:
                table[ch] = folded
    return table


def _ranges(codes: Iterable[int]) -> str:
    """A character class body of the given code points, runs written as ranges."""
    runs: list[list[int]] = []
    for code in sorted(codes):
        if runs and runs[-1][1] == code - 1:
            runs[-1][1] = code
        else:
            runs.append([code, code])
    return "".join(
        re.escape(chr(lo)) + (f"-{re.escape(chr(hi))}" if hi > lo else "") for lo, hi in runs
    )


FOLD = _fold_table()
"""Every character the view replaces, with what replaces it."""
# Astral characters make sre test a class range by range (a hundred times
# slower than its bitmap of the BMP), so they are one range here, and a
# character found there that is not in FOLD (an emoji) is skipped.
_CANDIDATE = re.compile(
    "[" + _ranges(ord(ch) for ch in FOLD if ord(ch) < 0x10000) + "\U00010000-\U0010ffff]"
)


class View:
    """A text's normalised view and the way back from its offsets to the text's.

    Only the folds that change the length are kept, as four parallel lists
    (view start, view end, text start, text end); offsets between them are
    shifted by the difference the folds before them made.
    """

    __slots__ = ("_text_ends", "_text_starts", "_view_ends", "_view_starts", "text")

    def __init__(self, text: str, folds: list[tuple[int, int, int, int]]) -> None:
        self.text = text
        self._view_starts = [f[0] for f in folds]
        self._view_ends = [f[1] for f in folds]
        self._text_starts = [f[2] for f in folds]
        self._text_ends = [f[3] for f in folds]

    def start(self, pos: int) -> int:
        """The text offset where a finding starting at view offset `pos` starts.

        Invisible characters just before it stay outside the finding.
        """
        i = bisect_right(self._view_ends, pos)
        if i < len(self._view_starts) and self._view_starts[i] <= pos:
            # Inside a fold that grew (a ligature): the whole character.
            return self._text_starts[i]
        return pos if not i else self._text_ends[i - 1] + pos - self._view_ends[i - 1]

    def end(self, pos: int) -> int:
        """The text offset where a finding ending at view offset `pos` ends.

        Invisible characters just after it stay outside the finding.
        """
        i = bisect_left(self._view_starts, pos)
        if not i:
            return pos
        if pos <= self._view_ends[i - 1]:
            return self._text_ends[i - 1]
        return self._text_ends[i - 1] + pos - self._view_ends[i - 1]

    def spans(self, found: list[Span]) -> list[Span]:
        """`found` (in view offsets) in the text's offsets."""
        if not self._view_starts:
            return found
        out = []
        for span in found:
            start = self.start(span.start)
            end = self.end(span.end) if span.end > span.start else start
            out.append(Span(span.entity, start, end, span.score))
        return out


def view(text: str) -> View | None:
    """The normalised view of `text`, or None when it is its own view."""
    if text.isascii():
        return None
    pieces: list[str] = []
    folds: list[tuple[int, int, int, int]] = []
    done = size = 0
    for m in _CANDIDATE.finditer(text):
        folded = FOLD.get(m.group())
        if folded is None:
            continue
        at = m.start()
        pieces.append(text[done:at])
        size += at - done
        pieces.append(folded)
        if len(folded) != 1:
            folds.append((size, size + len(folded), at, at + 1))
        size += len(folded)
        done = at + 1
    if not done:
        return None
    pieces.append(text[done:])
    return View("".join(pieces), folds)


# The last few non-ASCII texts and their views: the pipeline runs the
# secrets filter over a request's texts, then pii over the same texts, and
# a scan is followed by its holdback. One tuple, replaced whole, so threads
# scanning off the loop never see half of an update.
_RECENT = 8
_recent: tuple[tuple[str, View | None], ...] = ()


def _cached_view(text: str) -> View | None:
    global _recent
    recent = _recent
    for seen, folded in recent:
        if seen is text:
            return folded
    found = view(text)
    _recent = ((text, found), *recent[: _RECENT - 1])
    return found


def scan_view(scan: Callable[[str], list[Span]], text: str) -> list[Span]:
    """`scan` run on the view of `text`, its findings in the offsets of `text`."""
    if text.isascii():
        return scan(text)
    folded = _cached_view(text)
    return scan(text) if folded is None else folded.spans(scan(folded.text))


def tail_view(open_tail: Callable[[str], int], text: str) -> int:
    """`open_tail` run on the view of `text`, as a count of the characters of `text`."""
    if text.isascii():
        return open_tail(text)
    folded = _cached_view(text)
    if folded is None:
        return open_tail(text)
    held = open_tail(folded.text)
    return len(text) - folded.start(len(folded.text) - held) if held else 0
