"""The shipped unit: systemd accepts it, its exposure score is what the README says,
and the runtime survives the W^X rule the unit imposes."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gatewayd.config.schema import ServerConfig

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "gatewayd.service"
README = ROOT / "systemd" / "README.md"
TLS_DROP_IN = ROOT / "systemd" / "tls.conf"
EXPOSURE_BUDGET = 2.0


@pytest.fixture(scope="module")
def analyze() -> str:
    """Path of systemd-analyze; the tests that need it skip where it is not installed."""
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed")
    return path


@pytest.fixture
def staged_unit(tmp_path: Path) -> Path:
    """A copy of the unit whose ExecStart names this venv's gatewayd, since
    `verify` insists the binary exists and /usr/local/bin/gatewayd may not."""
    binary = Path(sys.executable).with_name("gatewayd")
    assert binary.is_file(), f"{binary} missing: install the checkout into its venv"
    text = UNIT.read_text().replace("ExecStart=/usr/local/bin/gatewayd", f"ExecStart={binary}")
    staged = tmp_path / UNIT.name
    staged.write_text(text)
    return staged


def test_the_tls_drop_in_loads_credentials_and_keeps_the_exposure(
    analyze: str, staged_unit: Path
) -> None:
    """With systemd/tls.conf as a drop-in, systemd reads every line of it, the key and
    certificate come from /etc/gatewayd/tls by LoadCredential=, and the score stays."""
    drop_ins = staged_unit.parent / f"{staged_unit.name}.d"
    drop_ins.mkdir()
    shutil.copy(TLS_DROP_IN, drop_ins / TLS_DROP_IN.name)
    result = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(staged_unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    measured = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    documented = re.search(r"Measured exposure: \*\*(\d+\.\d+)\*\*", README.read_text())
    assert measured is not None
    assert documented is not None
    assert measured[1] == documented[1]
    credentials = [
        line.partition("=")[2]
        for line in TLS_DROP_IN.read_text().splitlines()
        if line.startswith("LoadCredential=")
    ]
    assert credentials == [
        "tls.crt:/etc/gatewayd/tls/cert.pem",
        "tls.key:/etc/gatewayd/tls/key.pem",
    ]


def unit_settings() -> dict[str, list[str]]:
    """The unit's `Key=value` lines, every value of a repeated key kept in order."""
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_passes_verify(analyze: str, staged_unit: Path) -> None:
    """`systemd-analyze verify` accepts the unit without a single warning."""
    result = subprocess.run(
        [analyze, "verify", str(staged_unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_exposure_score_is_within_budget_and_documented(analyze: str, staged_unit: Path) -> None:
    """The offline security score is at most 2.0 and equals the README's measured number."""
    result = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(staged_unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    measured = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert measured is not None, result.stdout
    documented = re.search(r"Measured exposure: \*\*(\d+\.\d+)\*\*", README.read_text())
    assert documented is not None, "systemd/README.md lost its 'Measured exposure' line"
    assert float(measured[1]) <= EXPOSURE_BUDGET
    assert measured[1] == documented[1]


def test_unit_runs_the_installed_binary_and_outlasts_the_drain() -> None:
    """ExecStart matches what install-systemd installs, and systemd waits longer
    than the daemon's default drain before it sends SIGKILL."""
    settings = unit_settings()
    assert settings["ExecStart"] == ["/usr/local/bin/gatewayd -c /etc/gatewayd/gatewayd.yaml"]
    assert settings["Type"] == ["notify"]
    assert settings["KillMode"] == ["mixed"]
    stop_timeout = settings["TimeoutStopSec"][0]
    assert stop_timeout.endswith("s")
    assert float(stop_timeout[:-1]) > ServerConfig().shutdown_timeout


# Runs in a child so the prctl cannot leak into pytest. It proves the rule is
# in force first (a W+X mapping must fail), then exercises every native piece
# of the runtime: uvloop, aiodns/pycares through aiohttp's resolver, an aiohttp
# server and pooled client on loopback, orjson, the asyncpg/redis modules, and
# cryptography (Rust and OpenSSL) reading a certificate for gatewayd.tls.
MDWE_CHILD = textwrap.dedent(
    """
    import ctypes, mmap, sys
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        sys.exit(77)
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except PermissionError:
        pass
    else:
        sys.exit("a writable+executable mapping was allowed")

    import aiohttp, asyncpg, orjson, redis.asyncio, uvloop, yaml, prometheus_async
    from gatewayd import tls
    from aiohttp import web
    from aiohttp.resolver import AsyncResolver
    import gatewayd.systemd

    async def echo(request):
        return web.Response(body=orjson.dumps(orjson.loads(await request.read())))

    async def main():
        app = web.Application()
        app.router.add_post("/", echo)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        connector = aiohttp.TCPConnector(resolver=AsyncResolver())
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.post(f"http://localhost:{port}/", data=b'{"n": 1}') as resp:
                assert orjson.loads(await resp.read()) == {"n": 1}
        await runner.cleanup()

    uvloop.run(main())

    import tempfile, pathlib
    from gatewayd.config.schema import TlsConfig
    from tests.fakes.certs import TestCA
    pair = TestCA(pathlib.Path(tempfile.mkdtemp())).issue("mdwe")
    served = TlsConfig(cert=pair.cert, key=pair.key)
    assert tls.check(served).subject == pair.subject
    tls.server_context(served)
    print("ok")
    """
)


def test_runtime_needs_no_writable_executable_memory() -> None:
    """The native parts of the daemon's stack work under MemoryDenyWriteExecute=yes
    (approximated with the kernel's PR_SET_MDWE)."""
    result = subprocess.run(
        [sys.executable, "-c", MDWE_CHILD], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    if result.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"
