"""Redaction placeholders: `<ENTITY_N>` issued per request, and turned back.

A request's `Redactions` maps each redacted value to its placeholder (the same
value keeps the same placeholder, N counts per entity from 1) so the answer's
placeholders can be restored. Only placeholders this request issued are
restored: a model that invents `<EMAIL_ADDRESS_9>` gets it back as written.
"""

from __future__ import annotations

import re

Range = tuple[int, int]
"""[start, end) of a piece of text, in code points."""

_PLACEHOLDER = re.compile(r"<[A-Z0-9_]+_[0-9]+>")
_UNSAFE = re.compile(r"[^A-Z0-9_]")
# Entity names come from config and filters, a small fixed set, so the
# cleaned-up labels are kept rather than recomputed per finding.
_LABELS: dict[str, str] = {}


def _label(entity: str) -> str:
    label = _LABELS.get(entity)
    if label is None:
        # Restoring matches one fixed pattern, so the label is kept inside it.
        label = _LABELS[entity] = _UNSAFE.sub("_", entity.upper()) or "ENTITY"
    return label


class Redactions:
    """One request's placeholders and the values they stand for."""

    __slots__ = ("_counts", "_placeholders", "_values")

    def __init__(self) -> None:
        self._placeholders: dict[str, str] = {}
        self._values: dict[str, str] = {}
        self._counts: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        # The values are what redaction hides; a repr must not show them.
        return f"Redactions({len(self._values)} placeholders)"

    def placeholder(self, entity: str, value: str) -> str:
        """The placeholder for `value`, issuing the entity's next one if it is new."""
        placeholder = self._placeholders.get(value)
        if placeholder is None:
            label = _label(entity)
            n = self._counts.get(label, 0) + 1
            self._counts[label] = n
            placeholder = f"<{label}_{n}>"
            self._placeholders[value] = placeholder
            self._values[placeholder] = value
        return placeholder

    def restore(self, text: str) -> str:
        """`text` with this request's placeholders turned back into their values."""
        return self.restore_ranges(text)[0]

    def restore_ranges(self, text: str) -> tuple[str, list[Range]]:
        """Like `restore`, also giving where the restored values sit in the result.

        Returns `text` itself when nothing was restored.
        """
        return _restore(self._values, text)

    def restorer(self) -> StreamRestorer:
        """A restorer for one stream of text arriving in pieces."""
        return StreamRestorer(self._values)


class StreamRestorer:
    """Restores placeholders in a text that arrives piece by piece.

    A placeholder may be split across pieces, so a trailing `<`, `<EMA` or
    `<EMAIL_ADDRESS_1` is held until the next piece shows whether it is one
    of this request's placeholders; nothing else is held.
    """

    __slots__ = ("_longest", "_pending", "_prefixes", "_values")

    def __init__(self, values: dict[str, str]) -> None:
        # A snapshot: placeholders the output stage issues later are the
        # gateway's own and never come back from the upstream.
        self._values = dict(values)
        self._prefixes = frozenset(p[:i] for p in values for i in range(1, len(p)))
        self._longest = max(map(len, values), default=0)
        self._pending = ""

    @property
    def holding(self) -> bool:
        """Is a partial placeholder held back?"""
        return bool(self._pending)

    def push(self, text: str, final: bool = False) -> tuple[str, list[Range]]:
        """The restored text that can be released now, and where its restored values sit."""
        if self._pending:
            text = self._pending + text
            self._pending = ""
        if not final and text:
            cut = text.rfind("<", max(0, len(text) - self._longest + 1))
            if cut >= 0 and text[cut:] in self._prefixes:
                self._pending = text[cut:]
                text = text[:cut]
        return _restore(self._values, text)


def _restore(values: dict[str, str], text: str) -> tuple[str, list[Range]]:
    if not values or "<" not in text:
        return text, []
    pieces: list[str] = []
    ranges: list[Range] = []
    pos = 0
    size = 0
    for match in _PLACEHOLDER.finditer(text):
        value = values.get(match.group())
        if value is None:
            continue
        start = match.start()
        pieces.append(text[pos:start])
        size += start - pos
        ranges.append((size, size + len(value)))
        pieces.append(value)
        size += len(value)
        pos = match.end()
    if not ranges:
        return text, ranges
    pieces.append(text[pos:])
    return "".join(pieces), ranges
