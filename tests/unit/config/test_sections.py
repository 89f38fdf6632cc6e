"""The server and logging sections, in YAML and INI."""

from __future__ import annotations

import ipaddress

import pytest

from gatewayd.config import load
from gatewayd.config.schema import Listen, LoggingConfig, ServerConfig

from .conftest import Problems, Write


def test_server_yaml(write: Write) -> None:
    """Every server key converts to its typed value."""
    path = write(
        "gw.yaml",
        """
        server:
          listen: "[::1]:9000"
          workers: 4
          max_body_size: 512KiB
          read_timeout: 250ms
          shutdown_timeout: 0
          trusted_proxies: [10.0.0.0/8, "fd00::/8", 192.0.2.1]
        """,
    )
    assert load(path, {}).server == ServerConfig(
        listen=Listen("::1", 9000),
        workers=4,
        max_body_size=512 * 1024,
        read_timeout=0.25,
        shutdown_timeout=0.0,
        trusted_proxies=(
            ipaddress.ip_network("10.0.0.0/8"),
            ipaddress.ip_network("fd00::/8"),
            ipaddress.ip_network("192.0.2.1/32"),
        ),
    )


def test_server_ini_coerces_strings(write: Write) -> None:
    """INI strings become the same ints, sizes, durations and lists as YAML values."""
    path = write(
        "gw.ini",
        """
        [server]
        listen = 0.0.0.0:80
        workers = 2
        max_body_size = 1048576
        read_timeout = 2m
        trusted_proxies = 10.0.0.0/8, 172.16.0.0/12
        """,
    )
    server = load(path, {}).server
    assert (server.listen, server.workers, server.max_body_size) == (
        Listen("0.0.0.0", 80),
        2,
        1048576,
    )
    assert server.read_timeout == 120.0
    assert server.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("172.16.0.0/12"),
    )


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:8080", Listen("127.0.0.1", 8080)),
        ("[::1]:8080", Listen("::1", 8080)),
        ("0.0.0.0:80", Listen("0.0.0.0", 80)),
        ("localhost:0", Listen("localhost", 0)),
        ("[::]:65535", Listen("::", 65535)),
    ],
)
def test_listen_forms(write: Write, listen: str, expected: Listen) -> None:
    """IPv4, bracketed IPv6 and host names are accepted; port 0 means any free port."""
    path = write("gw.yaml", f'server:\n  listen: "{listen}"\n')
    assert load(path, {}).server.listen == expected


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("127.0.0.1", "expected HOST:PORT"),
        ("::1:8080", "expected HOST:PORT"),
        ("127.0.0.1:70000", "port must be between 0 and 65535; got 70000"),
        ("[zz]:80", "'zz' in brackets is not an IPv6 address"),
        ("300.1.1.1:80", "'300.1.1.1' is not an IPv4 address or host name"),
        ("-bad-:80", "'-bad-' is not an IPv4 address or host name"),
    ],
)
def test_listen_refused(write: Write, problems: Problems, listen: str, message: str) -> None:
    """Malformed listen addresses are problems on their line."""
    path = write("gw.yaml", f'server:\n  listen: "{listen}"\n')
    (problem,) = problems(path)
    assert (problem.line, problem.key) == (2, "server.listen")
    assert message in problem.message


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("workers", "1025", "must be between 1 and 1024"),
        ("workers", "1.5", "expected a whole number, got '1.5'"),
        ("workers", "true", "expected a whole number, got 'true'"),
        ("max_body_size", "0", "must be at least 1"),
        ("read_timeout", "0s", "must be longer than 0s"),
        ("read_timeout", ".inf", "a duration must be a finite number"),
        ("shutdown_timeout", "soon", "such as 250ms, 5s, 2m, 1h or 90d, got 'soon'"),
        ("trusted_proxies", "[10.0.0.1/8]", "no host bits set; got '10.0.0.1/8'"),
        ("listen", "[a, b]", "expected a single value, got a list"),
        ("trusted_proxies", "{a: b}", "expected a list, got a table"),
    ],
)
def test_server_range_problems(
    write: Write, problems: Problems, key: str, value: str, message: str
) -> None:
    """Out-of-range and mistyped server values name their key and line."""
    path = write("gw.yaml", f"# header\nserver:\n  {key}: {value}\n")
    (problem,) = problems(path)
    assert (problem.line, problem.key) == (3, f"server.{key}")
    assert message in problem.message


def test_logging(write: Write) -> None:
    """Logging level and format are case-insensitive words; access_log a boolean."""
    path = write("gw.ini", "[logging]\nlevel = DEBUG\nformat = text\naccess_log = off\n")
    assert load(path, {}).logging == LoggingConfig(level="debug", format="text", access_log=False)


@pytest.mark.parametrize("written", ["yes", "on", "1", "True", "TRUE"])
def test_ini_booleans(write: Write, written: str) -> None:
    """INI spells true as true, yes, on or 1, in any case."""
    path = write("gw.ini", f"[logging]\naccess_log = {written}\n")
    assert load(path, {}).logging.access_log is True


def test_bad_boolean(write: Write, problems: Problems) -> None:
    """A word that is not a boolean is a problem that quotes it."""
    path = write("gw.ini", "[logging]\naccess_log = maybe\n")
    assert [str(p) for p in problems(path)] == [
        f"{path}:2: logging.access_log: expected true or false, got 'maybe'"
    ]
