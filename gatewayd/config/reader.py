"""Walk one table of the tree, recording problems instead of raising.

A `Reader` hands out converted values key by key. Each problem names the file,
the line of the offending value (or of the key, or of the table when a key is
missing) and the dotted key path. Keys nobody asked for are reported as
unknown when the build ends, with the nearest known key as a hint.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from gatewayd.config.interpolate import interpolate
from gatewayd.config.source import Entry, Scalar, Table, describe
from gatewayd.config.values import Convert
from gatewayd.errors import Problem

T = TypeVar("T")

# Names become metric labels and INI section parts, so no dots or spaces.
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


@dataclass(frozen=True, slots=True)
class Many(Generic[T]):
    """Marks a key holding a list: a YAML sequence or a comma-separated string."""

    convert: Convert[T]


Spec = Mapping[str, Convert[Any] | Many[Any]]


@dataclass(slots=True)
class Context:
    """What every reader of one file shares: where it is, the env, the problems."""

    path: Path
    env: Mapping[str, str]
    problems: list[Problem] = field(default_factory=list)
    readers: list[Reader] = field(default_factory=list)

    def problem(self, line: int | None, key: str, message: str) -> None:
        """Record one problem."""
        self.problems.append(Problem(self.path, line, key, message))

    def report_unknown(self) -> None:
        """Report every key that no reader asked for."""
        for reader in self.readers:
            reader.report_unknown()


class Reader:
    """Reads the keys of one table; see the module docstring."""

    def __init__(self, context: Context, table: Table, key: str, line: int) -> None:
        self.context = context
        self.key = key
        self.line = line
        # Set by callers when "unknown key" alone would not say enough.
        self.unknown_message = "unknown key"
        self._table = table
        self._known: set[str] = set()
        context.readers.append(self)

    def path(self, name: str) -> str:
        """The dotted key path of `name` in this table."""
        return f"{self.key}.{name}" if self.key else name

    def line_of(self, name: str) -> int:
        """The line `name` is written on, or this table's line when it is absent."""
        entry = self._table.entries.get(name)
        return entry.line if entry is not None else self.line

    def problem(self, name: str, message: str, line: int | None = None) -> None:
        """Record a problem with key `name` of this table."""
        self.context.problem(
            line if line is not None else self.line_of(name), self.path(name), message
        )

    def names(self) -> list[str]:
        """Every key written in this table, in order; reading them marks them known."""
        self._known.update(self._table.entries)
        return list(self._table.entries)

    def skip_rest(self) -> None:
        """Stop reporting this table's unread keys (its header was already wrong)."""
        self._known.update(self._table.entries)

    def declared(self, name: str) -> set[str]:
        """The names written under table `name`, without reading it."""
        entry = self._table.entries.get(name)
        return (
            set(entry.node.entries)
            if entry is not None and isinstance(entry.node, Table)
            else set()
        )

    def has(self, name: str) -> bool:
        """Whether `name` is written with a value (a YAML null counts as absent)."""
        entry = self._take(name)
        return entry is not None and not (isinstance(entry.node, Scalar) and _unset(entry.node))

    def value(self, name: str, convert: Convert[T], *, required: bool = False) -> T | None:
        """The converted value of `name`; None if absent, empty or wrong (reported)."""
        entry = self._take(name)
        if entry is None:
            if required:
                self.problem(name, "is required")
            return None
        if not isinstance(entry.node, Scalar):
            self.problem(name, f"expected a single value, got {describe(entry.node)}", entry.line)
            return None
        scalar = self._resolve(entry.node, name)
        if scalar is None:
            return None
        if _unset(scalar):
            if required:
                self.problem(name, "is required", scalar.line)
            return None
        return self._convert(name, convert, scalar)

    def values(self, name: str, convert: Convert[T]) -> tuple[T, ...] | None:
        """The converted items of list `name`; None if absent or empty-string."""
        entry = self._take(name)
        if entry is None:
            return None
        node = entry.node
        if isinstance(node, Table):
            self.problem(name, "expected a list, got a table", entry.line)
            return None
        items: list[Scalar] = []
        if isinstance(node, Scalar):
            scalar = self._resolve(node, name)
            if scalar is None or _unset(scalar):
                return None
            if isinstance(scalar.value, str):
                pieces = (piece.strip() for piece in scalar.text.split(","))
                items = [Scalar(piece, piece, scalar.line) for piece in pieces if piece]
            else:
                items = [scalar]
        else:
            for item in node.items:
                if not isinstance(item, Scalar):
                    self.problem(
                        name, f"a list item must be a single value, not {describe(item)}", item.line
                    )
                    continue
                resolved = self._resolve(item, name)
                if resolved is not None and _unset(resolved):
                    self.problem(name, "a list item is empty", item.line)
                elif resolved is not None:
                    items.append(resolved)
        converted = (self._convert(name, convert, item) for item in items)
        return tuple(value for value in converted if value is not None)

    def fields(self, spec: Spec) -> dict[str, Any]:
        """Read every key of `spec` that is present, as keyword arguments."""
        found: dict[str, Any] = {}
        for name, convert in spec.items():
            value = (
                self.values(name, convert.convert)
                if isinstance(convert, Many)
                else self.value(name, convert)
            )
            if value is not None:
                found[name] = value
        return found

    def table(self, name: str) -> Reader | None:
        """A reader for sub-table `name`; None if absent or not a table (reported)."""
        entry = self._take(name)
        if entry is None:
            return None
        node = entry.node
        if isinstance(node, Table):
            return Reader(self.context, node, self.path(name), entry.line)
        if not (isinstance(node, Scalar) and _unset(node)):
            self.problem(name, f"expected a table, got {describe(node)}", entry.line)
        return None

    def tables(self, name: str) -> list[tuple[str, Reader]]:
        """The named tables under `name` (upstreams, routes, ...), in file order."""
        collection = self.table(name)
        if collection is None:
            return []
        result: list[tuple[str, Reader]] = []
        for entry_name in collection.names():
            if not NAME.fullmatch(entry_name):
                collection.problem(
                    entry_name, "a name is letters, digits, _ and -, starting with a letter or _"
                )
                continue
            reader = collection.table(entry_name)
            if reader is not None:
                result.append((entry_name, reader))
        return result

    def mapping(self, name: str, key: Convert[str], convert: Convert[T]) -> dict[str, T] | None:
        """Table `name` as a dict, each key checked by `key`, each value by `convert`."""
        table = self.table(name)
        if table is None:
            return None
        result: dict[str, T] = {}
        for entry_name in table.names():
            line = table.line_of(entry_name)
            checked = table._convert(entry_name, key, Scalar(entry_name, entry_name, line))
            value = table.value(entry_name, convert, required=True)
            if checked is not None and value is not None:
                result[checked] = value
        return result

    def report_unknown(self) -> None:
        """Report each key of this table that was never asked for."""
        for name, entry in self._table.entries.items():
            if name in self._known:
                continue
            hint = difflib.get_close_matches(name, sorted(self._known), n=1)
            message = (
                f"{self.unknown_message}; did you mean {hint[0]}?" if hint else self.unknown_message
            )
            self.problem(name, message, entry.line)

    def _take(self, name: str) -> Entry | None:
        self._known.add(name)
        return self._table.entries.get(name)

    def _resolve(self, scalar: Scalar, name: str) -> Scalar | None:
        if not isinstance(scalar.value, str):
            return scalar
        try:
            filled = interpolate(scalar.value, self.context.env)
        except ValueError as exc:
            self.problem(name, str(exc), scalar.line)
            return None
        return scalar if filled == scalar.value else Scalar(filled, filled, scalar.line)

    def _convert(self, name: str, convert: Convert[T], scalar: Scalar) -> T | None:
        try:
            return convert(scalar)
        except ValueError as exc:
            self.problem(name, str(exc), scalar.line)
            return None


def _unset(scalar: Scalar) -> bool:
    # Null and the empty string both mean "use the default", so that
    # `api_key: ${OPENAI_API_KEY:-}` with the variable unset means no key.
    return scalar.value is None or (isinstance(scalar.value, str) and not scalar.value.strip())
