"""Config test helpers: write a config file, load it, and read its problems."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from gatewayd.config import ConfigError, load
from gatewayd.errors import Problem

Write = Callable[[str, str], Path]
Problems = Callable[..., list[Problem]]


@pytest.fixture
def write(tmp_path: Path) -> Write:
    """A writer of dedented config text to tmp_path/NAME, returning the path."""

    def write_file(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    return write_file


@pytest.fixture
def problems() -> Problems:
    """A loader that expects the config to fail and returns its problems."""

    def load_problems(path: Path, env: Mapping[str, str] | None = None) -> list[Problem]:
        with pytest.raises(ConfigError) as caught:
            load(path, {} if env is None else env)
        return caught.value.problems

    return load_problems
