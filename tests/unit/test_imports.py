"""Every module of the package imports on its own, whatever is imported first."""

from __future__ import annotations

import subprocess
import sys

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
