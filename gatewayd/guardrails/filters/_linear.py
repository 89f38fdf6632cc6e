"""Operators' own patterns on RE2, whose matching time is linear in the text.

Python's `re` backtracks: one pattern like `(a+)+$` in a config would hold a
worker for as long as the text is long squared or worse. RE2 never
backtracks, so it cannot run look-around or back-references; a pattern that
needs them is refused at load with the reason, never with the pattern (which
may hold a credential).

The built-in detectors stay on `re`: their look-behinds are beyond RE2, and
on the short anchored matches they make RE2's per-call cost (the binding
encodes the text to UTF-8 on every call) is ten to twenty times `re`'s. Their
linear time is tested instead (tests/unit/guardrails/filters/test_linear.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Protocol, cast

import re2  # type: ignore[import-untyped]  # google-re2 ships no annotations

_OPTIONS = re2.Options()
# Refusals are reported as config problems; RE2's own log line would repeat
# the pattern on stderr.
_OPTIONS.log_errors = False


class LinearMatch(Protocol):
    """The part of a match the pii filter reads."""

    def start(self) -> int: ...
    def end(self) -> int: ...


class LinearPattern(Protocol):
    """A compiled RE2 pattern, as far as the pii filter uses one."""

    def finditer(self, text: str) -> Iterator[LinearMatch]: ...
    def search(self, text: str) -> LinearMatch | None: ...


def compile_linear(pattern: str) -> LinearPattern:
    """`pattern` compiled by RE2; ValueError (saying why, never what) if it cannot be.

    When RE2 refuses it, Python's parser says whether it is malformed (with
    the position, as operators know it) or only beyond RE2.
    """
    try:
        return cast(LinearPattern, re2.compile(pattern, _OPTIONS))
    except re2.error as exc:
        # RE2's message is "what: where", the part after the colon quoting the pattern.
        reason = bytes(exc.args[0]).decode("utf-8", "replace").split(":")[0]
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regular expression: {exc.msg} at position {exc.pos}") from None
    raise ValueError(
        f"the linear-time engine (RE2) cannot run this pattern: {reason}"
        " (it has no look-around, back-references or possessive repeats;"
        " $ is the end of the text)"
    )
