"""Every module of the package imports on its own, whatever is imported first."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

_CODE = """
import importlib, pkgutil, sys
import gatewayd
names = [m.name for m in pkgutil.walk_packages(gatewayd.__path__, "gatewayd.")]
for name in names:
    for loaded in [k for k in sys.modules if k == "gatewayd" or k.startswith("gatewayd.")]:
        del sys.modules[loaded]
    importlib.import_module(name)
print(len(names))
"""


def test_each_module_imports_first() -> None:
    """No circular import hides behind the usual import order (the CLI's)."""
    done = subprocess.run(
        [sys.executable, "-c", _CODE], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout) > 40


_LOAD = """
import sys
from gatewayd.config import load
load(sys.argv[1])
watched = ("prometheus_client", "gatewayd.observability.metrics")
print(sorted(m for m in sys.modules if m.startswith(watched)))
"""


def test_loading_a_config_imports_no_metrics(tmp_path: Path) -> None:
    """Whatever a config names, loading it leaves the metrics unimported: with workers,
    the CLI must choose where they are kept (a shared directory) only after loading."""
    path = tmp_path / "gw.yaml"
    path.write_text(
        textwrap.dedent(
            """
            server: {workers: 2}
            upstreams: {u: {url: "http://127.0.0.1:9"}}
            routes: {v1: {prefix: /v1/, upstream: u, policy: p}}
            filters:
              pii: {kind: pii, custom: {EMPLOYEE_ID: "E-[0-9]{6}"}}
              secrets: {kind: secrets}
              words: {kind: keywords, words: [project falcon]}
              injection: {kind: injection}
              presidio: {kind: presidio, url: "http://127.0.0.1:3000"}
            policies:
              p: {mode: redact, input: [pii, secrets, words, injection, presidio], output: [pii]}
            ratelimit: {backend: redis, redis_url: "redis://127.0.0.1:6379/0"}
            audit: {sink: postgres, postgres_dsn: "postgresql://u@127.0.0.1/db"}
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-c", _LOAD, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
