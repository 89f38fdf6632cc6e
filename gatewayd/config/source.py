"""The tree both loaders produce: plain values that remember their line.

YAML and INI files become the same tree, so one builder validates both. A
scalar keeps its typed value (YAML says `3` is an int, INI only has strings)
and the text it was written as, because some keys want the text: a presidio
`language: no` is Norwegian, not False.
"""

from __future__ import annotations

from dataclasses import dataclass

ScalarValue = str | int | float | bool | None


@dataclass(frozen=True, slots=True)
class Scalar:
    """One value as written; `value` is None for YAML null."""

    value: ScalarValue
    text: str
    line: int


@dataclass(frozen=True, slots=True)
class Seq:
    """A YAML sequence (INI lists stay strings until the builder splits them)."""

    items: tuple[Node, ...]
    line: int


@dataclass(frozen=True, slots=True)
class Entry:
    """One key of a table: where the key is written and what it holds."""

    line: int
    node: Node


@dataclass(frozen=True, slots=True)
class Table:
    """A mapping of keys to entries, in the order they were written."""

    # A plain dict so the INI reader can fill a section after creating it.
    entries: dict[str, Entry]
    line: int


Node = Scalar | Seq | Table


def describe(node: Node) -> str:
    """Name a node's shape for a problem message, never its content."""
    if isinstance(node, Table):
        return "a table"
    if isinstance(node, Seq):
        return "a list"
    return "a single value"
