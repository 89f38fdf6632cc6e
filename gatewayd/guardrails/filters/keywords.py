"""The keywords filter: a deny-list of phrases, matched as whole words in any case."""

from __future__ import annotations

import re
from pathlib import Path

from gatewayd.config.schema import KeywordsFilterConfig, OnError
from gatewayd.guardrails.filters._phrases import (
    START_BOUNDARY,
    longest_match,
    prefix_pattern,
    whole_pattern,
)
from gatewayd.guardrails.filters._spans import clear_of_findings, fold_case, tail_holdback
from gatewayd.guardrails.types import Span

# Longer phrases would make the factored regex nest past what is sensible.
MAX_PHRASE = 200


def read_phrases(path: Path) -> list[str]:
    """Phrases from a file: one per line; blank lines and lines starting with '#' skipped."""
    phrases = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            phrases.append(line)
    return phrases


class KeywordsFilter:
    """Finds deny-listed phrases: case-insensitive, word-bounded, Unicode-aware.

    All phrases are one factored regex (see _phrases), longest first.
    """

    def __init__(self, config: KeywordsFilterConfig) -> None:
        self.name = config.name
        self.on_error: OnError | None = config.on_error
        self.entity = config.entity
        phrases = list(config.words)
        if config.file is not None:
            phrases += read_phrases(config.file)
        # Lower-cased and deduplicated: they are matched against lower-cased text.
        folded = sorted({" ".join(p.lower().split()) for p in phrases} - {""})
        if too_long := sum(len(p) > MAX_PHRASE for p in folded):
            raise ValueError(f"{too_long} keyword phrase(s) longer than {MAX_PHRASE} characters")
        self._phrases = bool(folded)
        self._scan = re.compile(whole_pattern(folded))
        self._tail = re.compile(rf"{START_BOUNDARY}(?:{prefix_pattern(folded)})\Z", re.IGNORECASE)
        self._window = longest_match(folded)

    def scan(self, text: str) -> list[Span]:
        """Every deny-listed phrase in `text`, in order."""
        if not self._phrases:
            return []
        entity = self.entity
        return [Span(entity, m.start(), m.end()) for m in self._scan.finditer(fold_case(text))]

    def holdback(self, text: str) -> int:
        """The trailing characters that begin (or are) a phrase: more text may complete it."""
        return clear_of_findings(text, self.open_tail(text), self.scan)

    def open_tail(self, text: str) -> int:
        """The trailing characters that begin a phrase, finished ones aside (see holdback)."""
        if not self._phrases:
            return 0
        return tail_holdback(self._tail, text, self._window)
