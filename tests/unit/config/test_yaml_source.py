"""YAML text to the line-numbered tree."""

from __future__ import annotations

import textwrap
from pathlib import Path

from gatewayd.config.source import Scalar, Seq, Table
from gatewayd.config.yaml_source import parse_yaml

PATH = Path("gw.yaml")


def _parse(text: str) -> tuple[Table, list[str]]:
    tree, problems = parse_yaml(textwrap.dedent(text).lstrip("\n"), PATH)
    return tree, [str(p) for p in problems]


def _scalar(table: Table, *keys: str) -> Scalar:
    node: object = table
    for key in keys:
        assert isinstance(node, Table)
        node = node.entries[key].node
    assert isinstance(node, Scalar)
    return node


def test_lines_and_types() -> None:
    """Keys and values keep their line; scalars get their YAML type and their text."""
    tree, problems = _parse(
        """
        server:
          workers: 4
          ratio: 0.5
          access: true
          listen: 127.0.0.1:8080
          empty:
        """
    )
    assert problems == []
    server = tree.entries["server"]
    assert server.line == 1
    assert isinstance(server.node, Table)
    assert server.node.entries["workers"].line == 2
    assert _scalar(tree, "server", "workers") == Scalar(4, "4", 2)
    assert _scalar(tree, "server", "ratio") == Scalar(0.5, "0.5", 3)
    assert _scalar(tree, "server", "access") == Scalar(True, "true", 4)
    assert _scalar(tree, "server", "listen") == Scalar("127.0.0.1:8080", "127.0.0.1:8080", 5)
    assert _scalar(tree, "server", "empty").value is None


def test_off_is_false_but_keeps_its_text() -> None:
    """PyYAML's `off` is False; the text stays available for keys that want words."""
    tree, _ = _parse("policy:\n  mode: off\n  language: no\n")
    assert _scalar(tree, "policy", "mode") == Scalar(False, "off", 2)
    assert _scalar(tree, "policy", "language").text == "no"


def test_keys_are_taken_as_written() -> None:
    """A key `on` (a boolean in YAML 1.1) stays the key "on"."""
    tree, _ = _parse("retry:\n  on: [connect, 502]\n")
    retry = tree.entries["retry"].node
    assert isinstance(retry, Table)
    on = retry.entries["on"].node
    assert isinstance(on, Seq)
    assert on.items == (Scalar("connect", "connect", 2), Scalar(502, "502", 2))


def test_sequence_items_keep_their_lines() -> None:
    """Block sequence items each carry their own line."""
    tree, _ = _parse("input:\n  - pii\n  - secrets\n")
    node = tree.entries["input"].node
    assert isinstance(node, Seq)
    assert [item.line for item in node.items] == [2, 3]


def test_duplicate_keys_are_problems() -> None:
    """A key written twice is reported at its second line; the first value stays."""
    tree, problems = _parse(
        """
        server:
          workers: 1
          workers: 2
        """
    )
    assert problems == ["gw.yaml:3: server.workers: duplicate key (first set at line 2)"]
    assert _scalar(tree, "server", "workers").value == 1


def test_syntax_error_gives_line_without_quoting_source() -> None:
    """A syntax error names the line but does not echo the file's text."""
    _, problems = _parse('upstreams:\n  a:\n    api_key: "sk-secret\n    url: [x\n')
    assert len(problems) == 1
    assert problems[0].startswith("gw.yaml:")
    assert "YAML syntax error" in problems[0]
    assert "sk-secret" not in problems[0]


def test_top_level_must_be_a_table() -> None:
    """A file holding a list instead of sections is one problem."""
    tree, problems = _parse("- a\n- b\n")
    assert tree.entries == {}
    assert problems == ["gw.yaml:1: the top level must be a table of sections"]


def test_empty_file_is_an_empty_table() -> None:
    """An empty document is an empty tree, not an error."""
    tree, problems = _parse("# nothing yet\n")
    assert (tree.entries, problems) == ({}, [])


def test_merge_keys_fill_missing_keys() -> None:
    """`<<: *anchor` copies keys the mapping does not set itself, with their own lines."""
    tree, problems = _parse(
        """
        defaults: &defaults
          connect_timeout: 2s
          pool_size: 10
        upstream:
          <<: *defaults
          pool_size: 50
        """
    )
    assert problems == []
    assert _scalar(tree, "upstream", "pool_size") == Scalar(50, "50", 6)
    assert _scalar(tree, "upstream", "connect_timeout") == Scalar("2s", "2s", 2)


def test_merge_of_a_value_is_a_problem() -> None:
    """Merging something other than a table is reported."""
    _, problems = _parse("a: &x 1\nb:\n  <<: *x\n")
    assert problems == ["gw.yaml:1: b: a merge key (<<) needs a table or a list of tables"]


def test_unsupported_tag_is_a_problem() -> None:
    """Tags beyond plain YAML types are refused, not constructed."""
    _, problems = _parse("server:\n  workers: !!python/int 3\n")
    assert problems == [
        "gw.yaml:2: server.workers: unsupported YAML tag tag:yaml.org,2002:python/int"
    ]


def test_recursive_alias_is_a_problem() -> None:
    """A node that contains an alias to itself is reported instead of recursing forever."""
    _, problems = _parse("a: &loop\n  b: *loop\n")
    assert problems == ["gw.yaml:2: a.b: an alias refers to a node that contains it"]


def test_complex_key_is_a_problem() -> None:
    """A key that is itself a list is reported."""
    _, problems = _parse("? [a, b]\n: 1\n")
    assert problems == ["gw.yaml:1: a key must be a plain value"]
