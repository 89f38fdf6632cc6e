"""Redaction placeholders: `<ENTITY_N>` issued per request, and turned back.

A request's `Redactions` maps each redacted value to its placeholder (the same
value keeps the same placeholder, N counts per entity from 1) so the answer's
placeholders can be restored. Only placeholders this request issued are
restored: a model that invents `<EMAIL_ADDRESS_9>` gets it back as written,
and one the client wrote itself is reserved, so a redacted value never takes
its name and the client's literal text is never turned into someone's value.

Output filters read an answer before its placeholders are restored (with the
placeholders protected), so a new value written right against a restored one
is still found; restoring comes last, escaped for JSON where the text is JSON.
"""

from __future__ import annotations

import re

import orjson

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

    __slots__ = ("_counts", "_partials", "_placeholders", "_reserved", "_values")

    def __init__(self) -> None:
        self._placeholders: dict[str, str] = {}
        self._values: dict[str, str] = {}
        self._counts: dict[str, int] = {}
        self._reserved: set[str] = set()
        # Every proper prefix of a placeholder and the longest one's length,
        # for the restorers of a stream's channels: built once, not per channel.
        self._partials: tuple[frozenset[str], int] | None = None

    def reserve(self, text: str) -> None:
        """Keep the placeholder-shaped strings the client wrote in `text` from being issued."""
        if "<" in text:
            self._reserved.update(_PLACEHOLDER.findall(text))

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
            placeholder = f"<{label}_{n}>"
            while placeholder in self._reserved:
                n += 1
                placeholder = f"<{label}_{n}>"
            self._counts[label] = n
            self._placeholders[value] = placeholder
            self._values[placeholder] = value
            self._partials = None
        return placeholder

    def restore(self, text: str, json: bool = False) -> str:
        """`text` with this request's placeholders turned back into their values,
        escaped as JSON string content when `json`; `text` itself if none was."""
        return _restore(self._values, text, json)

    def issued(self, text: str) -> list[Range]:
        """Where this request's placeholders sit in `text`: output filters leave them be."""
        if not self._values or "<" not in text:
            return []
        values = self._values
        return [m.span() for m in _PLACEHOLDER.finditer(text) if m.group() in values]

    def snapshot(self) -> Redactions:
        """The placeholders issued so far: placeholders issued later (by output
        filters) are the gateway's own and are never restored."""
        copy = Redactions()
        copy._values = dict(self._values)
        return copy

    def restorer(self, json: bool = False) -> StreamRestorer:
        """A restorer for one stream of text arriving in pieces. It reads these
        placeholders as they are: take it from a `snapshot`."""
        if self._partials is None:
            values = self._values
            prefixes = frozenset(p[:i] for p in values for i in range(1, len(p)))
            self._partials = (prefixes, max(map(len, values), default=0))
        return StreamRestorer(self._values, self._partials, json)


class StreamRestorer:
    """Restores placeholders in a text that arrives piece by piece.

    A placeholder may be split across pieces, so a trailing `<`, `<EMA` or
    `<EMAIL_ADDRESS_1` is held until the next piece shows whether it is one
    of this request's placeholders; nothing else is held.
    """

    __slots__ = ("_json", "_longest", "_pending", "_prefixes", "_values")

    def __init__(
        self, values: dict[str, str], partials: tuple[frozenset[str], int], json: bool = False
    ) -> None:
        self._values = values
        self._prefixes, self._longest = partials
        self._pending = ""
        self._json = json

    @property
    def holding(self) -> bool:
        """Is a partial placeholder held back?"""
        return bool(self._pending)

    def push(self, text: str, final: bool = False) -> str:
        """The restored text that can be released now."""
        if self._pending:
            text = self._pending + text
            self._pending = ""
        if not final and text:
            cut = text.rfind("<", max(0, len(text) - self._longest + 1))
            if cut >= 0 and text[cut:] in self._prefixes:
                self._pending = text[cut:]
                text = text[:cut]
        return _restore(self._values, text, self._json)


def _restore(values: dict[str, str], text: str, json: bool) -> str:
    if not values or "<" not in text:
        return text
    pieces: list[str] = []
    pos = 0
    for match in _PLACEHOLDER.finditer(text):
        value = values.get(match.group())
        if value is None:
            continue
        if json:
            # Inside a JSON string: a quote or backslash in the value must not
            # end the string or add keys to the arguments the client parses.
            value = orjson.dumps(value).decode()[1:-1]
        pieces.append(text[pos : match.start()])
        pieces.append(value)
        pos = match.end()
    if not pieces:
        return text
    pieces.append(text[pos:])
    return "".join(pieces)
