"""The `gatewayd` command: run in the foreground, check a config, read the audit,
or say the version.

gatewayd [-c PATH]                  load PATH, then run until stopped
gatewayd -c PATH --check-config     print problems as PATH:LINE: key: message; exit 0/1
gatewayd -c PATH audit tail [-n N] [--follow]   recent audit events as JSON lines
gatewayd -c PATH audit replay       drain the audit spool into the database
gatewayd keygen NAME                print a new client key once, and its config lines
gatewayd --version
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator

from gatewayd import __version__
from gatewayd.config import ConfigError, load
from gatewayd.config.schema import Config

DEFAULT_CONFIG = "/etc/gatewayd/gatewayd.yaml"
# Where prometheus_client keeps file-backed values when several processes serve.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


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
    commands = parser.add_subparsers(dest="command")
    audit = commands.add_parser("audit", help="read the audit trail, or drain its spool")
    actions = audit.add_subparsers(dest="action", required=True)
    tail = actions.add_parser("tail", help="print recent audit events as JSON lines")
    tail.add_argument("-n", "--lines", type=int, default=10, metavar="N", help="how many (10)")
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    actions.add_parser("replay", help="store the spooled events in the database now")
    keygen = commands.add_parser(
        "keygen", help="print a new client key once, and the config lines to paste"
    )
    keygen.add_argument("name", help="the client's name under clients:")
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
    if args.command == "keygen":
        # Needs no config: the key is for a config yet to be written.
        from gatewayd.keygen import keygen

        status, text = keygen(args.name)
        print(text, file=sys.stdout if status == 0 else sys.stderr)
        return status
    path = args.config or os.environ.get("GATEWAYD_CONFIG") or DEFAULT_CONFIG
    try:
        config = load(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    if args.check_config:
        if config.server.tls is not None:
            from gatewayd.tls import expiry_warning

            warning = expiry_warning(config.server.tls)
            if warning is not None:
                print(f"{path}: {warning}", file=sys.stderr)
        if config.server.workers > 1 and config.ratelimit.backend == "memory":
            print(
                f"{path}: warning: ratelimit.backend: memory keeps budgets per worker, so"
                f" {config.server.workers} workers allow {config.server.workers} times each"
                " limit; use backend: redis to share them",
                file=sys.stderr,
            )
        print(f"{path}: configuration ok")
        return 0
    if args.command == "audit":
        return _audit(config, args)
    return _serve(config)


def _audit(config: Config, args: argparse.Namespace) -> int:
    """`gatewayd audit tail|replay` against the configured sink."""
    # Imported here, as the daemon is only when serving.
    from gatewayd.audit import tools

    if args.action == "replay":
        return tools.replay(config.audit)
    try:
        return tools.tail(config.audit, max(args.lines, 0), follow=args.follow)
    except KeyboardInterrupt:
        # Ctrl-C is how a --follow ends.
        return 0


def _serve(config: Config) -> int:
    """Run one serving process, or an arbiter over server.workers of them."""
    # Imported only to run, so --check-config needs nothing beyond the config.
    # prometheus_client decides in-memory or file-backed values when first
    # imported (by gatewayd.daemon, through its metrics), so the environment
    # is settled before either import below.
    if config.server.workers == 1:
        # An inherited directory would make a lone process write metric files.
        os.environ.pop(MULTIPROC_ENV, None)
        from gatewayd.daemon import run

        return run(config)
    with _shared_metrics():
        from gatewayd.arbiter import run as run_workers

        return run_workers(config)


@contextlib.contextmanager
def _shared_metrics() -> Iterator[None]:
    """A fresh private directory where every worker's metrics meet, removed on exit."""
    # $RUNTIME_DIRECTORY (systemd's RuntimeDirectory=) is tmpfs the service
    # owns; otherwise mkdtemp's 0700 directory under $TMPDIR. Never a shared,
    # fixed path: files left by another run would be added to this one's.
    directory = tempfile.mkdtemp(
        prefix="gatewayd-metrics-", dir=os.environ.get("RUNTIME_DIRECTORY")
    )
    os.environ[MULTIPROC_ENV] = directory
    try:
        yield
    finally:
        # Workers never return here: a forked child leaves with os._exit.
        shutil.rmtree(directory, ignore_errors=True)
