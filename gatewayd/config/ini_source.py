"""Read INI into the same line-numbered tree as YAML.

configparser forgets line numbers, lower-cases keys and treats indented lines
as continuations; this reader does none of that. `[a.b]` opens table `b`
inside `a`; `key = value` sets a string (the builder coerces it); `#` and `;`
start a comment at the start of a line or after whitespace.
"""

from __future__ import annotations

import re
from pathlib import Path

from gatewayd.config.source import Entry, Scalar, Table
from gatewayd.errors import Problem

# A comment marker counts only after whitespace, so `http://h/#x` and `a;b`
# keep their characters.
_COMMENT = re.compile(r"(?:^|\s)[#;]")
_SECTION = re.compile(r"\[(?P<name>[^\[\]]*)\]")
_KEY = re.compile(r"[^\s.=\[\]]+")


def parse_ini(text: str, path: Path) -> tuple[Table, list[Problem]]:
    """Turn INI text into a tree plus the problems met on the way."""
    reader = _IniReader(path)
    for number, raw in enumerate(text.splitlines(), start=1):
        reader.line(number, raw)
    return reader.root, reader.problems


class _IniReader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.root = Table({}, 1)
        self.problems: list[Problem] = []
        self._section: Table | None = None
        self._section_name = ""
        self._declared: dict[str, int] = {}

    def problem(self, line: int, key: str, message: str) -> None:
        self.problems.append(Problem(self.path, line, key, message))

    def line(self, number: int, raw: str) -> None:
        comment = _COMMENT.search(raw)
        content = (raw[: comment.start()] if comment else raw).strip()
        if not content:
            return
        section = _SECTION.fullmatch(content)
        if section is not None:
            self.open_section(number, section.group("name").strip())
        elif content.startswith("["):
            self.problem(number, "", "a section header must look like [name] or [name.sub]")
            # The keys below belong to a section we could not name; skip them.
            self._section, self._section_name = None, content
        elif "=" in content:
            key, value = content.split("=", 1)
            self.set(number, key.strip(), value.strip())
        else:
            self.problem(number, self._section_name, "expected `key = value` or a [section]")

    def open_section(self, number: int, name: str) -> None:
        self._section_name = name
        self._section = None
        parts = name.split(".")
        if not all(_KEY.fullmatch(part) for part in parts):
            self.problem(number, name, "a section name is dot-separated words without spaces")
            return
        if name in self._declared:
            first = self._declared[name]
            self.problem(number, name, f"duplicate section (first at line {first})")
        else:
            self._declared[name] = number
        table = self.root
        for depth, part in enumerate(parts):
            entry = table.entries.get(part)
            if entry is None:
                entry = Entry(number, Table({}, number))
                table.entries[part] = entry
            if not isinstance(entry.node, Table):
                where = ".".join(parts[: depth + 1])
                self.problem(number, where, f"already set as a value at line {entry.line}")
                return
            table = entry.node
        self._section = table

    def set(self, number: int, key: str, value: str) -> None:
        dotted = f"{self._section_name}.{key}" if self._section_name else key
        if not _KEY.fullmatch(key):
            self.problem(number, dotted, "a key is one word; nested keys need a [section.sub]")
            return
        if self._section is None:
            if not self._section_name:
                self.problem(number, key, "a key must be inside a [section]")
            # Otherwise the section header itself was bad and already reported.
            return
        existing = self._section.entries.get(key)
        if existing is not None:
            self.problem(number, dotted, f"duplicate key (first set at line {existing.line})")
            return
        self._section.entries[key] = Entry(number, Scalar(value, value, number))
