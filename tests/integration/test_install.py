"""scripts/install-systemd staged into a temporary DESTDIR: layout, relocation, idempotence."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

from packaging.utils import canonicalize_name

from tests.unit.test_lock import RUNTIME_LOCK, read_lock

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "install-systemd"
PREFIX = "/opt/gw"
VENV = f"{PREFIX}/lib/gatewayd/venv"


def install(destdir: Path) -> str:
    """Run the installer into `destdir` and return its output."""
    # The locked dependencies come from pip's cache once it is warm.
    env = {**os.environ, "DESTDIR": str(destdir)}
    result = subprocess.run(
        [str(SCRIPT), PREFIX], env=env, capture_output=True, text=True, timeout=300, cwd=destdir
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_staged_install_lays_out_a_relocatable_service(tmp_path: Path) -> None:
    """A DESTDIR install puts venv, symlink, config, key file and unit where the
    unit expects them, naming final paths, not staging ones; the venv holds
    exactly the locked versions."""
    output = install(tmp_path)
    assert "no daemon-reload" in output
    link = tmp_path / PREFIX.lstrip("/") / "bin" / "gatewayd"
    assert os.readlink(link) == f"{VENV}/bin/gatewayd"

    venv = tmp_path / VENV.lstrip("/")
    shebang = (venv / "bin" / "gatewayd").read_text().splitlines()[0]
    assert shebang == f"#!{VENV}/bin/python"
    for script in (venv / "bin").iterdir():
        if script.is_file() and not script.is_symlink():
            assert str(tmp_path).encode() not in script.read_bytes(), script.name
    imported = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import gatewayd; print(gatewayd.__file__)"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert imported.stdout.startswith(str(venv)), imported.stderr
    listed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format=json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    installed = {canonicalize_name(p["name"]): p["version"] for p in json.loads(listed.stdout)}
    locked = {name: version for name, (version, _) in read_lock(RUNTIME_LOCK).items()}
    assert {name: installed.get(name) for name in locked} == locked
    assert installed.keys() - locked.keys() == {"gatewayd", "pip"}

    etc = tmp_path / "etc" / "gatewayd"
    assert (etc / "gatewayd.yaml").read_bytes() == (
        ROOT / "etc" / "gatewayd" / "gatewayd.yaml"
    ).read_bytes()
    assert stat.S_IMODE((etc / "environment").stat().st_mode) == 0o600

    unit = (tmp_path / "etc" / "systemd" / "system" / "gatewayd.service").read_text()
    assert f"ExecStart={PREFIX}/bin/gatewayd -c /etc/gatewayd/gatewayd.yaml\n" in unit
    assert f"Documentation=file://{PREFIX}/share/doc/gatewayd/README.systemd.md\n" in unit
    assert (tmp_path / PREFIX.lstrip("/") / "share/doc/gatewayd/README.systemd.md").is_file()


def test_reinstall_keeps_the_operators_files(tmp_path: Path) -> None:
    """Running the installer again succeeds and leaves an edited config and key file alone."""
    install(tmp_path)
    etc = tmp_path / "etc" / "gatewayd"
    (etc / "gatewayd.yaml").write_text("# edited by the operator\n")
    (etc / "environment").write_text("OPENAI_API_KEY=sk-local\n")
    output = install(tmp_path)
    assert "gatewayd.yaml exists, left as is" in output
    assert (etc / "gatewayd.yaml").read_text() == "# edited by the operator\n"
    assert (etc / "environment").read_text() == "OPENAI_API_KEY=sk-local\n"
