"""The TLS listener in process: what --check-config refuses, mutual TLS at the handshake,
a swapped certificate for new connections only, session tickets, and peer_subject."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import shutil
import socket
import ssl
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gatewayd import cli
from gatewayd.config import ConfigError, load
from gatewayd.config.schema import TlsConfig
from gatewayd.tls import TlsError, TlsListener, check, expiry_warning, peer_subject
from tests.conftest import free_port
from tests.fakes.certs import Pair, TestCA

Serve = Callable[[TlsListener], Awaitable[str]]


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    """A fresh test CA in tmp_path/ca."""
    return TestCA(tmp_path / "ca")


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Serve an app answering peer_subject() over a TlsListener; returns its https URL."""
    runners: list[web.AppRunner] = []

    async def who(request: web.Request) -> web.Response:
        return web.json_response({"subject": peer_subject(request)})

    async def start(listener: TlsListener) -> str:
        app = web.Application()
        app.router.add_get("/who", who)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=listener.context).start()
        return f"https://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


def _tls(pair: Pair, **extra: object) -> TlsConfig:
    return TlsConfig(cert=pair.cert, key=pair.key, **extra)  # type: ignore[arg-type]


async def _get_subject(url: str, context: ssl.SSLContext) -> str | None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/who", ssl=context) as resp,
    ):
        assert resp.status == 200
        subject: str | None = (await resp.json())["subject"]
        return subject


def _served_fingerprint(url: str, context: ssl.SSLContext) -> str:
    """The sha256 fingerprint of the certificate a new connection to `url` is shown."""
    host, port = url.removeprefix("https://").split(":")
    with (
        socket.create_connection((host, int(port))) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def _write_config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "gatewayd.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def test_check_reports_subject_expiry_and_fingerprint(ca: TestCA) -> None:
    """A good pair passes check() with the certificate's subject, expiry and fingerprint."""
    pair = ca.issue("server-a")
    info = check(_tls(pair))
    assert info.subject == pair.subject
    assert info.fingerprint_sha256 == pair.fingerprint_sha256
    assert info.not_after == pair.not_after


def test_check_config_refuses_a_key_that_is_not_the_certificates(
    ca: TestCA, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--check-config names the line, the key file and the mismatch, and exits 1."""
    good, other = ca.issue("server-a"), ca.issue("server-b")
    path = _write_config(
        tmp_path,
        f"""
        server:
          tls:
            cert: {good.cert}
            key: {other.key}
        """,
    )
    assert cli.main(["-c", str(path), "--check-config"]) == 1
    err = capsys.readouterr().err
    assert f"{path}:5: server.tls.key: {other.key} does not match the certificate in" in err


def test_check_config_refuses_unreadable_and_non_pem_files(ca: TestCA, tmp_path: Path) -> None:
    """A missing certificate and a key file that holds no key are each a problem with its line."""
    pair = ca.issue("server-a")
    (tmp_path / "junk.key").write_text("not a key\n")
    path = _write_config(
        tmp_path,
        """
        server:
          tls:
            cert: missing.pem
            key: junk.key
        """,
    )
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert [str(p) for p in caught.value.problems] == [
        f"{path}:4: server.tls.cert: cannot read {tmp_path / 'missing.pem'}:"
        " No such file or directory"
    ]
    shutil.copy(pair.cert, tmp_path / "missing.pem")
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert [str(p) for p in caught.value.problems] == [
        f"{path}:5: server.tls.key: {tmp_path / 'junk.key'} holds no PEM private key"
    ]


def test_check_config_refuses_an_expired_certificate_and_warns_before(
    ca: TestCA, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Expired is an error; expiring within 14 days passes with a warning on stderr."""
    expired = ca.issue("old", expired=True)
    path = _write_config(
        tmp_path, f"server:\n  tls:\n    cert: {expired.cert}\n    key: {expired.key}\n"
    )
    assert cli.main(["-c", str(path), "--check-config"]) == 1
    assert f"server.tls.cert: {expired.cert} expired on" in capsys.readouterr().err

    soon = ca.issue("soon", days=5)
    path.write_text(f"server:\n  tls:\n    cert: {soon.cert}\n    key: {soon.key}\n")
    assert cli.main(["-c", str(path), "--check-config"]) == 0
    captured = capsys.readouterr()
    assert "configuration ok" in captured.out
    assert f"server.tls.cert: warning: {soon.cert} expires on" in captured.err
    assert "(in 4 days)" in captured.err
    later = ca.issue("later", days=60)
    assert expiry_warning(_tls(later)) is None


def test_server_keys_that_need_workers_are_refused_without(tmp_path: Path) -> None:
    """max_requests and worker_timeout with one process are refused with the reason."""
    path = _write_config(
        tmp_path,
        """
        server:
          max_requests: 50
          worker_timeout: 5s
        """,
    )
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert [str(p) for p in caught.value.problems] == [
        f"{path}:3: server.max_requests: needs server.workers above 1:"
        " a lone process has no arbiter to start its replacement",
        f"{path}:4: server.worker_timeout: needs server.workers above 1:"
        " a lone process has no arbiter to watch its heartbeat",
    ]
    path.write_text("server:\n  workers: 2\n  max_requests: 50\n  backlog: 4096\n")
    server = load(path).server
    assert (server.max_requests, server.backlog, server.worker_timeout) == (50, 4096, 30.0)


async def test_mutual_tls_accepts_a_client_certificate_and_refuses_none(
    ca: TestCA, tmp_path: Path, serve: Serve
) -> None:
    """With client_ca, a verified client's subject reaches the request; a client without
    a certificate, or with one from another CA, is refused in the handshake."""
    listener = TlsListener(_tls(ca.issue("server-a"), client_ca=ca.path))
    url = await serve(listener)
    client = ca.issue("client-a", client=True)
    assert await _get_subject(url, ca.client_context(client)) == client.subject

    stranger_ca = TestCA(tmp_path / "other", name="other CA")
    stranger = stranger_ca.issue("client-b", client=True)
    for context in (ca.client_context(), ca.client_context(stranger)):
        with pytest.raises(aiohttp.ClientError):
            await _get_subject(url, context)


async def test_without_client_ca_there_is_no_peer_subject(ca: TestCA, serve: Serve) -> None:
    """A client certificate sent to a listener without client_ca is not an identity."""
    url = await serve(TlsListener(_tls(ca.issue("server-a"))))
    assert await _get_subject(url, ca.client_context(ca.issue("client-a", client=True))) is None


async def test_a_swapped_certificate_serves_new_connections_only(ca: TestCA, serve: Serve) -> None:
    """After swap(), a new connection sees the new certificate; an open one keeps its own."""
    first, second = ca.issue("server-a"), ca.issue("server-b")
    tls = _tls(first)
    listener = TlsListener(tls)
    url = await serve(listener)
    context = ca.client_context()
    host, port = url.removeprefix("https://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port), ssl=context)
    request = b"GET /who HTTP/1.1\r\nHost: x\r\n\r\n"
    writer.write(request)
    assert (await reader.readuntil(b"}")).startswith(b"HTTP/1.1 200")
    for path, source in ((tls.cert, second.cert), (tls.key, second.key)):
        shutil.copy(source, path)
    listener.swap(listener.prepare(tls))
    served = await asyncio.to_thread(_served_fingerprint, url, context)
    assert served == second.fingerprint_sha256
    # The connection opened before the swap still serves, with its own certificate.
    writer.write(request)
    assert (await reader.readuntil(b"}")).startswith(b"HTTP/1.1 200")
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    assert hashlib.sha256(der).hexdigest() == first.fingerprint_sha256
    assert listener.info.fingerprint_sha256 == second.fingerprint_sha256


async def test_a_mismatched_pair_is_refused_and_the_old_one_serves(
    ca: TestCA, serve: Serve
) -> None:
    """prepare() with a key of another certificate raises; the listener keeps its certificate."""
    first, other = ca.issue("server-a"), ca.issue("server-b")
    tls = _tls(first)
    listener = TlsListener(tls)
    url = await serve(listener)
    shutil.copy(other.key, tls.key)
    with pytest.raises(TlsError, match="does not match the certificate"):
        listener.prepare(tls)
    served = await asyncio.to_thread(_served_fingerprint, url, ca.client_context())
    assert served == first.fingerprint_sha256


async def test_session_tickets_resume_the_session(ca: TestCA, serve: Serve) -> None:
    """A returning client resumes its TLS session from the ticket instead of a full handshake."""
    url = await serve(TlsListener(_tls(ca.issue("server-a"))))
    host, port = url.removeprefix("https://").split(":")
    context = ca.client_context()

    def connect(session: ssl.SSLSession | None) -> tuple[ssl.SSLSession | None, bool]:
        with (
            socket.create_connection((host, int(port))) as raw,
            context.wrap_socket(raw, server_hostname=host, session=session) as tls,
        ):
            tls.sendall(b"GET /who HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            # TLS 1.3 tickets arrive after the handshake: read the answer first.
            while tls.recv(4096):
                pass
            return tls.session, tls.session_reused

    session, reused = await asyncio.to_thread(connect, None)
    assert not reused
    assert session is not None
    assert session.has_ticket
    _, reused = await asyncio.to_thread(connect, session)
    assert reused


async def test_min_version_1_3_refuses_a_tls_1_2_client(ca: TestCA, serve: Serve) -> None:
    """min_version 1.3 refuses a client that speaks at most TLS 1.2, in the handshake."""
    url = await serve(TlsListener(_tls(ca.issue("server-a"), min_version="1.3")))
    context = ca.client_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(aiohttp.ClientError):
        await _get_subject(url, context)
    assert await _get_subject(url, ca.client_context()) is None


def test_a_reload_cannot_change_what_the_listener_fixed(ca: TestCA) -> None:
    """min_version, ciphers and turning client_ca on or off are named as needing a restart."""
    pair = ca.issue("server-a")
    listener = TlsListener(_tls(pair))
    assert listener.restart_needed(_tls(pair)) == []
    changed = _tls(pair, min_version="1.3", ciphers="ECDHE+AESGCM", client_ca=ca.path)
    assert listener.restart_needed(changed) == [
        "server.tls.min_version",
        "server.tls.ciphers",
        "server.tls.client_ca",
    ]


def test_expiry_is_measured_from_now(ca: TestCA) -> None:
    """check() refuses a certificate once `now` is past its expiry."""
    pair = ca.issue("server-a", days=1)
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=2)
    with pytest.raises(TlsError, match="expired on"):
        check(_tls(pair), now=later)


def test_ini_server_tls_section_is_the_yaml_table(ca: TestCA, tmp_path: Path) -> None:
    """[server.tls] in INI loads to the same TlsConfig as server.tls in YAML."""
    pair = ca.issue("server-a")
    yaml_path = _write_config(
        tmp_path,
        f"""
        server:
          tls:
            cert: {pair.cert}
            key: {pair.key}
            client_ca: {ca.path}
            min_version: 1.3
        """,
    )
    ini_path = tmp_path / "gatewayd.ini"
    ini_path.write_text(
        f"[server.tls]\ncert = {pair.cert}\nkey = {pair.key}\n"
        f"client_ca = {ca.path}\nmin_version = TLSv1.3\n"
    )
    expected = TlsConfig(cert=pair.cert, key=pair.key, client_ca=ca.path, min_version="1.3")
    assert load(yaml_path).server.tls == expected
    assert load(ini_path).server.tls == expected
