"""The `gatewayd` command: run in the foreground, check a config, or say the version.

gatewayd [-c PATH]                  load PATH, then run until stopped
gatewayd -c PATH --check-config     print problems as PATH:LINE: key: message; exit 0/1
gatewayd --version
"""

from __future__ import annotations

import argparse
import os
import sys

from gatewayd import __version__
from gatewayd.config import ConfigError, load

DEFAULT_CONFIG = "/etc/gatewayd/gatewayd.yaml"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gatewayd",
        description="An LLM guardrail gateway for OpenAI-compatible APIs.",
    )
    parser.add_argument(
        "-c",
        "--config",
        metavar="PATH",
        help="config file, .yaml/.yml or .ini/.conf"
        f" (default: $GATEWAYD_CONFIG, then {DEFAULT_CONFIG})",
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the config, print every problem, and exit 1 if there are any",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` (default sys.argv[1:]), act on it, and return the exit status."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        # argparse exits on --help (0) and on bad usage (2); callers want a number.
        return exc.code if isinstance(exc.code, int) else 2
    if args.version:
        print(f"gatewayd {__version__}")
        return 0
    path = args.config or os.environ.get("GATEWAYD_CONFIG") or DEFAULT_CONFIG
    try:
        config = load(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    if args.check_config:
        print(f"{path}: configuration ok")
        return 0
    # Imported only to run, so --check-config needs nothing beyond the config.
    from gatewayd.daemon import run

    return run(config)
