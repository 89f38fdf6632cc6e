"""Start the real `gatewayd` process, with a real NOTIFY_SOCKET, for end-to-end tests."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import free_port


@dataclass
class DaemonProcess:
    url: str
    config_path: Path
    log_path: Path
    proc: asyncio.subprocess.Process
    notify: socket.socket
    messages: list[str] = field(default_factory=list)

    def write_config(self, text: str) -> None:
        """Replace the config file, same listener (the next SIGHUP reads it)."""
        listen = self.url.removeprefix("http://")
        self.config_path.write_text(textwrap.dedent(text).replace("{listen}", listen))

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    async def notifications(self, until: str, count: int = 1) -> list[str]:
        """The sd_notify datagrams so far, once `count` of them contain `until` (10 s at most)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while sum(until in m for m in self.messages) < count:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"no {until!r} in {self.messages}; log:\n{self.log()}")
            try:
                data = await asyncio.wait_for(loop.sock_recv(self.notify, 4096), remaining)
            except TimeoutError:
                continue
            self.messages.append(data.decode())
        return self.messages

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    async def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """One sample's value from /metrics (0 when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        async with aiohttp.ClientSession() as client, client.get(f"{self.url}/metrics") as r:
            text = await r.text()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and (labels is None or sample.labels == labels):
                    return float(sample.value)
        return 0.0


@pytest.fixture
async def start_daemon(tmp_path: Path) -> AsyncIterator[object]:
    """A factory: start_daemon(config text with {listen}) -> a running DaemonProcess.

    `env` adds to the process environment; with `ready=False` the factory
    returns at once instead of waiting for READY=1 (for a start that fails).
    """
    started: list[DaemonProcess] = []

    async def start(
        text: str, *, env: dict[str, str] | None = None, ready: bool = True
    ) -> DaemonProcess:
        port = free_port()
        config_path = tmp_path / "gatewayd.yaml"
        config_path.write_text(textwrap.dedent(text).replace("{listen}", f"127.0.0.1:{port}"))
        # One per start: a test may start gatewayd again after killing it.
        notify_path = tmp_path / f"notify-{len(started)}.sock"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        notify.setblocking(False)
        log_path = tmp_path / "gatewayd.log"
        environ = {
            **os.environ,
            "NOTIFY_SOCKET": str(notify_path),
            "STATE_DIRECTORY": str(tmp_path),
            **(env or {}),
        }
        with log_path.open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gatewayd", "-c", str(config_path),
                stdout=log, stderr=log, env=environ,
            )  # fmt: skip
        daemon = DaemonProcess(f"http://127.0.0.1:{port}", config_path, log_path, proc, notify)
        started.append(daemon)
        if ready:
            await daemon.notifications("READY=1")
        return daemon

    yield start

    for daemon in started:
        if daemon.proc.returncode is None:
            daemon.proc.kill()
            await daemon.proc.wait()
        daemon.notify.close()
