"""sd_notify against real AF_UNIX datagram sockets standing in for systemd."""

from __future__ import annotations

import importlib
import logging
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gatewayd import systemd


class Listener:
    """A bound datagram socket playing systemd's notify socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def receive(self) -> list[str]:
        """The lines of the next datagram; fails the test if none arrives soon."""
        self.sock.settimeout(2)
        return self.sock.recv(4096).decode().split("\n")

    def assert_silent(self) -> None:
        """Fail if any datagram is waiting."""
        self.sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            self.sock.recv(4096)


@pytest.fixture
def path_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    """NOTIFY_SOCKET set to a filesystem socket bound in tmp_path."""
    address = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(address))
        monkeypatch.setenv("NOTIFY_SOCKET", str(address))
        yield Listener(sock)


@pytest.fixture
def abstract_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    """NOTIFY_SOCKET set to an `@name` socket in the abstract namespace."""
    name = f"gatewayd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        yield Listener(sock)


def test_without_notify_socket_is_a_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside systemd every helper returns False and sends nothing."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    assert systemd.ready() is False
    assert systemd.reloading() is False
    assert systemd.stopping() is False
    assert systemd.status("idle") is False


def test_ready_reaches_a_path_socket(path_socket: Listener) -> None:
    """ready() sends READY=1 to a filesystem NOTIFY_SOCKET."""
    assert systemd.ready() is True
    assert path_socket.receive() == ["READY=1"]


def test_ready_with_status_is_one_datagram(path_socket: Listener) -> None:
    """ready(status) carries READY=1 and STATUS in the same datagram."""
    assert systemd.ready("listening on 127.0.0.1:8080") is True
    assert path_socket.receive() == ["READY=1", "STATUS=listening on 127.0.0.1:8080"]
    path_socket.assert_silent()


def test_abstract_socket_is_reached(abstract_socket: Listener) -> None:
    """An `@name` NOTIFY_SOCKET is addressed in the abstract namespace."""
    assert systemd.stopping() is True
    assert abstract_socket.receive() == ["STOPPING=1"]


def test_reloading_carries_a_monotonic_timestamp(path_socket: Listener) -> None:
    """reloading() sends RELOADING=1 with the CLOCK_MONOTONIC time in microseconds."""
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert systemd.reloading() is True
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    reload_line, stamp_line = path_socket.receive()
    assert reload_line == "RELOADING=1"
    key, _, value = stamp_line.partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_status_text_cannot_inject_lines(path_socket: Listener) -> None:
    """A newline in status text is flattened so it cannot forge another KEY=VALUE."""
    assert systemd.status("reload failed\nREADY=1") is True
    assert path_socket.receive() == ["STATUS=reload failed READY=1"]


def test_notify_sends_arbitrary_lines_together(abstract_socket: Listener) -> None:
    """notify() joins its lines into a single datagram, in order."""
    assert systemd.notify("STATUS=draining", "EXTEND_TIMEOUT_USEC=5000000") is True
    assert abstract_socket.receive() == ["STATUS=draining", "EXTEND_TIMEOUT_USEC=5000000"]


def test_vanished_socket_returns_false_and_logs_debug_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A NOTIFY_SOCKET whose listener is gone yields False and only a debug record."""
    address = tmp_path / "gone"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(address))
    address.unlink()
    monkeypatch.setenv("NOTIFY_SOCKET", str(address))
    with caplog.at_level(logging.DEBUG, logger="gatewayd.systemd"):
        assert systemd.stopping() is False
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]


def test_socket_without_reader_does_not_raise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bound-but-closed socket file (ECONNREFUSED) is tolerated like a missing one."""
    address = tmp_path / "stale"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(address))
    monkeypatch.setenv("NOTIFY_SOCKET", str(address))
    assert systemd.ready() is False


def test_import_sends_nothing(path_socket: Listener) -> None:
    """Importing the module has no side effects, even with NOTIFY_SOCKET set."""
    importlib.reload(systemd)
    path_socket.assert_silent()
