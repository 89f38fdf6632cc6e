"""Read YAML into the line-numbered tree (the canonical config format).

`yaml.compose` keeps each node's position, which `yaml.safe_load` throws away;
scalars are then built with PyYAML's safe constructor so `3`, `true` and `1.5`
get their YAML 1.1 types. Keys are taken as written, so `on:` stays "on".
"""

from __future__ import annotations

from pathlib import Path

import yaml
from yaml.constructor import SafeConstructor

from gatewayd.config.source import Entry, Node, Scalar, Seq, Table
from gatewayd.errors import Problem

_TAG = "tag:yaml.org,2002:"
_TYPED_TAGS = {_TAG + name for name in ("int", "float", "bool", "null")}
# Timestamps have no place in the schema; a value that looks like a date is
# kept as the text it was written as.
_TEXT_TAGS = {_TAG + "str", _TAG + "timestamp"}
_MERGE_TAG = _TAG + "merge"


def parse_yaml(text: str, path: Path) -> tuple[Table, list[Problem]]:
    """Turn YAML text into a tree plus the problems met on the way."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        # Only the parser's own words: `str(exc)` would quote the source line.
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        message = " ".join(part for part in (exc.context, exc.problem) if part)
        return Table({}, 1), [Problem(path, line, "", f"YAML syntax error: {message}")]
    except yaml.YAMLError as exc:
        return Table({}, 1), [Problem(path, None, "", f"YAML syntax error: {exc}")]
    if root is None:
        return Table({}, 1), []
    composer = _Composer(path)
    tree = composer.node(root, "", frozenset(), 1)
    if not isinstance(tree, Table):
        composer.problem(root, "", "the top level must be a table of sections")
        return Table({}, 1), composer.problems
    return tree, composer.problems


class _Composer:
    """Converts composed nodes, collecting problems instead of stopping at one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.problems: list[Problem] = []
        self._constructor = SafeConstructor()

    def problem(self, node: yaml.Node, key: str, message: str) -> None:
        self.problems.append(Problem(self.path, _line(node), key, message))

    def node(self, node: yaml.Node, key: str, parents: frozenset[int], line: int) -> Node:
        # Aliases make the composed graph share nodes; an anchor that contains
        # its own alias would otherwise recurse forever. `line` is where the
        # node is referenced: an alias node only knows where its anchor is.
        if id(node) in parents:
            self.problems.append(
                Problem(self.path, line, key, "an alias refers to a node that contains it")
            )
            return Scalar(None, "", line)
        inside = parents | {id(node)}
        if isinstance(node, yaml.MappingNode):
            return self.table(node, key, inside)
        if isinstance(node, yaml.SequenceNode):
            items = tuple(
                self.node(item, f"{key}[{index}]", inside, _line(node))
                for index, item in enumerate(node.value)
            )
            return Seq(items, _line(node))
        return self.scalar(node, key)

    def scalar(self, node: yaml.Node, key: str) -> Scalar:
        text = str(node.value)
        if node.tag in _TEXT_TAGS:
            return Scalar(text, text, _line(node))
        if node.tag in _TYPED_TAGS:
            value = self._constructor.construct_object(node)
            return Scalar(value, text, _line(node))
        self.problem(node, key, f"unsupported YAML tag {node.tag}")
        return Scalar(None, "", _line(node))

    def table(self, node: yaml.MappingNode, key: str, parents: frozenset[int]) -> Table:
        entries: dict[str, Entry] = {}
        merged: list[Table] = []
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.problem(key_node, key, "a key must be a plain value")
                continue
            if key_node.tag == _MERGE_TAG:
                merged.extend(self.merge_sources(value_node, key, parents))
                continue
            name = str(key_node.value)
            path = f"{key}.{name}" if key else name
            if name in entries:
                first = entries[name].line
                self.problem(key_node, path, f"duplicate key (first set at line {first})")
                continue
            entries[name] = Entry(
                _line(key_node), self.node(value_node, path, parents, _line(key_node))
            )
        # `<<: *defaults` fills only the keys the mapping does not set itself;
        # with a list of sources the earlier one wins.
        for source in merged:
            for name, entry in source.entries.items():
                entries.setdefault(name, entry)
        return Table(entries, _line(node))

    def merge_sources(self, node: yaml.Node, key: str, parents: frozenset[int]) -> list[Table]:
        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        tables: list[Table] = []
        for source in sources:
            converted = self.node(source, key, parents, _line(node))
            if isinstance(converted, Table):
                tables.append(converted)
            else:
                self.problem(source, key, "a merge key (<<) needs a table or a list of tables")
        return tables


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1
