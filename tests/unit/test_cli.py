"""The gatewayd command: --version, --check-config, the default path, and running."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest

from gatewayd import __version__
from gatewayd.cli import main
from gatewayd.config.schema import Config

GOOD = "upstreams:\n  u:\n    url: http://127.0.0.1:9\n"
BAD = "server:\n  workers: 0\nupstreams:\n  u:\n    url: ftp://h\n"


@pytest.fixture
def good(tmp_path: Path) -> Path:
    """A valid config file."""
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    return path


@pytest.fixture
def bad(tmp_path: Path) -> Path:
    """A config file with two problems."""
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    return path


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints the name and version and succeeds."""
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"gatewayd {__version__}\n"


def test_check_config_ok(good: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A valid config prints `PATH: configuration ok` and exits 0."""
    assert main(["-c", str(good), "--check-config"]) == 0
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == (f"{good}: configuration ok\n", "")


def test_check_config_problems(bad: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each problem goes to stderr as PATH:LINE: key: message, and the exit status is 1."""
    assert main(["--config", str(bad), "--check-config"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"{bad}:2: server.workers: must be between 1 and 1024\n"
        f"{bad}:5: upstreams.u.url: must be a URL starting with http:// or https://\n"
    )


def test_config_from_environment(
    good: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without -c, $GATEWAYD_CONFIG names the file."""
    monkeypatch.setenv("GATEWAYD_CONFIG", str(good))
    assert main(["--check-config"]) == 0
    assert capsys.readouterr().out == f"{good}: configuration ok\n"


def test_default_path(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Without -c or $GATEWAYD_CONFIG, /etc/gatewayd/gatewayd.yaml is read."""
    monkeypatch.delenv("GATEWAYD_CONFIG", raising=False)
    monkeypatch.setattr("gatewayd.cli.DEFAULT_CONFIG", "/nonexistent/gatewayd/gatewayd.yaml")
    assert main(["--check-config"]) == 1
    assert capsys.readouterr().err.startswith("/nonexistent/gatewayd/gatewayd.yaml: cannot read:")


def test_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown option is a usage error with exit status 2, not an exception."""
    assert main(["--frobnicate"]) == 2
    assert "unrecognized arguments: --frobnicate" in capsys.readouterr().err


def test_run_hands_config_to_daemon(good: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --check-config the loaded Config goes to daemon.run, whose status is returned."""
    received: list[Config] = []

    def run(config: Config) -> int:
        received.append(config)
        return 3

    # The real daemon serves until signalled; a stand-in records the call.
    daemon = types.ModuleType("gatewayd.daemon")
    daemon.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gatewayd.daemon", daemon)
    assert main(["-c", str(good)]) == 3
    assert [config.source for config in received] == [good]


def test_run_refuses_bad_config(
    bad: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad config prints its problems and exits 1 before the daemon is imported."""
    monkeypatch.setitem(sys.modules, "gatewayd.daemon", None)
    assert main(["-c", str(bad)]) == 1
    assert capsys.readouterr().err.count(f"{bad}:") == 2


def test_python_dash_m(good: Path, bad: Path) -> None:
    """`python -m gatewayd --check-config -c PATH` works as a real process."""
    ok = subprocess.run(
        [sys.executable, "-m", "gatewayd", "--check-config", "-c", str(good)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, f"{good}: configuration ok\n", "")
    failed = subprocess.run(
        [sys.executable, "-m", "gatewayd", "--check-config", "-c", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert failed.returncode == 1
    assert failed.stdout == ""
    assert failed.stderr.splitlines()[0] == f"{bad}:2: server.workers: must be between 1 and 1024"
