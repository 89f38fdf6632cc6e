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


def _audit_file(tmp_path: Path, lines: int) -> Path:
    """A config whose jsonl audit file holds `lines` lines numbered 0.."""
    (tmp_path / "audit.jsonl").write_bytes(b"".join(b'{"n":%d}\n' % n for n in range(lines)))
    path = tmp_path / "gw.yaml"
    path.write_text(GOOD + f"audit:\n  path: {tmp_path}/audit.jsonl\n")
    return path


def test_audit_tail_prints_the_last_lines(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """`audit tail -n N` prints the file's last N lines as they are."""
    config = _audit_file(tmp_path, 30_000)
    assert main(["-c", str(config), "audit", "tail", "-n", "3"]) == 0
    assert capsysbinary.readouterr().out == b'{"n":29997}\n{"n":29998}\n{"n":29999}\n'
    assert main(["-c", str(config), "audit", "tail", "-n", "0"]) == 0
    assert capsysbinary.readouterr().out == b""


def test_audit_tail_without_a_file_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing audit file is exit status 1 with a message, not a traceback."""
    path = tmp_path / "gw.yaml"
    path.write_text(GOOD + f"audit:\n  path: {tmp_path}/none.jsonl\n")
    assert main(["-c", str(path), "audit", "tail"]) == 1
    assert "no audit file yet" in capsys.readouterr().err


def test_audit_tail_follows_appends_and_rotation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--follow prints whole appended lines, and carries on in the new file after a rotation."""
    from gatewayd.audit import tools
    from gatewayd.config import load

    monkeypatch.setattr(tools, "POLL", 0.01)
    config = load(_audit_file(tmp_path, 2))
    audit = tmp_path / "audit.jsonl"
    steps = [
        lambda: audit.open("ab").write(b'{"n":2}\n{"n":3'),
        lambda: audit.open("ab").write(b"}\n"),
        lambda: audit.rename(tmp_path / "audit.jsonl.1"),
        lambda: audit.write_bytes(b'{"n":4}\n'),
    ]

    def running() -> bool:
        if steps:
            steps.pop(0)()
            return True
        return False

    out = types.SimpleNamespace(chunks=[])
    sink = types.SimpleNamespace(write=out.chunks.append, flush=lambda: None)
    assert tools.tail(config.audit, 1, follow=True, out=sink, running=running) == 0  # type: ignore[arg-type]
    assert b"".join(out.chunks) == b'{"n":1}\n{"n":2}\n{"n":3}\n{"n":4}\n'


def test_audit_replay_without_a_spool(good: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`audit replay` with the jsonl sink has nothing to do, and says why."""
    assert main(["-c", str(good), "audit", "replay"]) == 0
    assert "audit.sink is jsonl: it has no spool" in capsys.readouterr().err


def test_audit_needs_an_action(good: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`gatewayd audit` alone is a usage error naming the actions."""
    assert main(["-c", str(good), "audit"]) == 2
    assert "tail" in capsys.readouterr().err


def test_check_config_warns_of_per_worker_memory_budgets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Memory budgets under several workers pass the check with a warning saying why."""
    path = tmp_path / "gw.yaml"
    path.write_text(
        "server:\n  workers: 4\nupstreams:\n  u:\n    url: http://127.0.0.1:9\n"
        "ratelimit:\n  requests_per_minute: 60\n"
    )
    assert main(["-c", str(path), "--check-config"]) == 0
    assert "4 workers allow 4 times each limit" in capsys.readouterr().err
