"""Load a config file into a validated `Config`, or fail with every problem in it.

    load(path) -> Config        raises ConfigError(problems)

The format follows the extension (.yaml/.yml or .ini/.conf). Reading goes
text -> line-numbered tree (yaml_source, ini_source) -> Config (build), with
`${VAR}` interpolation and unit parsing on the way.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from gatewayd.config.build import build_config
from gatewayd.config.ini_source import parse_ini
from gatewayd.config.reader import Context
from gatewayd.config.schema import Config
from gatewayd.config.source import Table
from gatewayd.config.yaml_source import parse_yaml
from gatewayd.errors import ConfigError, Problem

__all__ = ["Config", "ConfigError", "Problem", "load"]

_PARSERS: dict[str, Callable[[str, Path], tuple[Table, list[Problem]]]] = {
    ".yaml": parse_yaml,
    ".yml": parse_yaml,
    ".ini": parse_ini,
    ".conf": parse_ini,
}


def load(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read, interpolate from `env` (default os.environ) and validate one config file."""
    given = Path(path)
    parse = _PARSERS.get(given.suffix.lower())
    if parse is None:
        raise ConfigError(
            [
                Problem(
                    given,
                    None,
                    "",
                    "unknown config format: name the file .yaml, .yml, .ini or .conf",
                )
            ]
        )
    try:
        text = given.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            [Problem(given, None, "", f"cannot read: {exc.strerror or type(exc).__name__}")]
        ) from exc
    except UnicodeDecodeError as exc:
        message = f"not UTF-8 text (byte {exc.start})"
        raise ConfigError([Problem(given, None, "", message)]) from exc
    tree, problems = parse(text, given)
    context = Context(given, os.environ if env is None else env, problems)
    config = build_config(tree, context, given.absolute())
    if context.problems:
        # File order reads best; problems without a line (whole file) go first.
        raise ConfigError(sorted(context.problems, key=lambda p: p.line or 0))
    return config
