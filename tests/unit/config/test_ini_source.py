"""INI text to the same line-numbered tree as YAML."""

from __future__ import annotations

import textwrap
from pathlib import Path

from gatewayd.config.ini_source import parse_ini
from gatewayd.config.source import Scalar, Table

PATH = Path("gw.ini")


def _parse(text: str) -> tuple[Table, list[str]]:
    tree, problems = parse_ini(textwrap.dedent(text).lstrip("\n"), PATH)
    return tree, [str(p) for p in problems]


def _node(table: Table, *keys: str) -> object:
    node: object = table
    for key in keys:
        assert isinstance(node, Table)
        node = node.entries[key].node
    return node


def test_sections_nest_and_keep_lines() -> None:
    """`[a.b.c]` nests tables; keys and values keep their lines and case."""
    tree, problems = _parse(
        """
        [upstreams.openai]
        url = https://api.openai.com

        [upstreams.openai.retry]
        attempts = 3
        [policies.p.entities]
        US_SSN = block
        """
    )
    assert problems == []
    assert tree.entries["upstreams"].line == 1
    assert _node(tree, "upstreams", "openai", "url") == Scalar(
        "https://api.openai.com", "https://api.openai.com", 2
    )
    assert _node(tree, "upstreams", "openai", "retry", "attempts") == Scalar("3", "3", 5)
    assert _node(tree, "policies", "p", "entities", "US_SSN") == Scalar("block", "block", 7)


def test_comments() -> None:
    """# and ; start comments at line start or after whitespace, not inside a value."""
    tree, problems = _parse(
        """
        # a comment
        ; another
        [server]   # trailing
        listen = 127.0.0.1:8080 ; where
        url = http://h/#frag
        pattern = a;b
            workers = 2
        """
    )
    assert problems == []
    assert _node(tree, "server", "listen") == Scalar("127.0.0.1:8080", "127.0.0.1:8080", 4)
    assert _node(tree, "server", "url") == Scalar("http://h/#frag", "http://h/#frag", 5)
    assert _node(tree, "server", "pattern") == Scalar("a;b", "a;b", 6)
    assert _node(tree, "server", "workers") == Scalar("2", "2", 7)


def test_values_are_strings_split_on_first_equals() -> None:
    """Everything after the first = is the value, spaces trimmed; empty stays empty."""
    tree, _ = _parse("[f]\nregex = a=b\nempty =\n")
    assert _node(tree, "f", "regex") == Scalar("a=b", "a=b", 2)
    assert _node(tree, "f", "empty") == Scalar("", "", 3)


def test_duplicate_key_and_section() -> None:
    """A key or a section written twice is reported with the first line."""
    _, problems = _parse(
        """
        [server]
        workers = 1
        workers = 2
        [server]
        listen = 0.0.0.0:80
        """
    )
    assert problems == [
        "gw.ini:3: server.workers: duplicate key (first set at line 2)",
        "gw.ini:4: server: duplicate section (first at line 1)",
    ]


def test_section_over_a_value() -> None:
    """A section whose path runs through a plain value is reported."""
    _, problems = _parse("[routes]\nopenai = x\n[routes.openai]\nprefix = /\n")
    assert problems == ["gw.ini:3: routes.openai: already set as a value at line 2"]


def test_key_outside_section() -> None:
    """A key before any section has nowhere to go."""
    _, problems = _parse("workers = 2\n[server]\n")
    assert problems == ["gw.ini:1: workers: a key must be inside a [section]"]


def test_malformed_lines() -> None:
    """Lines that are neither a section nor key = value are reported, each once."""
    _, problems = _parse(
        """
        [server]
        listen: 127.0.0.1:80
        retry.attempts = 3
        [bad section]
        x = 1
        [broken
        y = 2
        """
    )
    assert problems == [
        "gw.ini:2: server: expected `key = value` or a [section]",
        "gw.ini:3: server.retry.attempts: a key is one word; nested keys need a [section.sub]",
        "gw.ini:4: bad section: a section name is dot-separated words without spaces",
        "gw.ini:6: a section header must look like [name] or [name.sub]",
    ]
