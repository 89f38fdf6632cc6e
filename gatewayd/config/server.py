"""Build the `server` section: the listener, its TLS files, and how workers are kept.

The TLS files are read here, at every load, so `--check-config`, a start and a
reload all refuse the same faults (an unreadable file, a key that is not the
certificate's, an expired certificate) with the line that names the file.
Keys that only the arbiter acts on are refused without workers, with why.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from gatewayd.config import values as v
from gatewayd.config.reader import Many, Reader, Spec
from gatewayd.config.schema import ServerConfig, TlsConfig
from gatewayd.config.source import Scalar

_SERVER: Spec = {
    "listen": v.listen,
    "workers": v.integer(1, 1024),
    "max_body_size": v.size(1),
    "read_timeout": v.duration(positive=True),
    "shutdown_timeout": v.duration(),
    "trusted_proxies": Many(v.network),
    "backlog": v.integer(1, 65535),
    "max_requests": v.integer(1),
    "max_requests_jitter": v.integer(0),
    "worker_timeout": v.duration(positive=True),
}
# What each key needs an arbiter for, said when workers is 1.
_NEEDS_WORKERS = {
    "max_requests": "a lone process has no arbiter to start its replacement",
    "max_requests_jitter": "a lone process has no arbiter to start its replacement",
    "worker_timeout": "a lone process has no arbiter to watch its heartbeat",
}
# Short enough to see in a test, long enough that a heartbeat every quarter
# of it is not lost behind one slow loop turn.
_MIN_WORKER_TIMEOUT = 1.0


def read_server(reader: Reader, base: Path) -> ServerConfig:
    """The `server` table; relative TLS paths are taken from `base`."""
    fields: dict[str, Any] = reader.fields(_SERVER)
    tls = reader.table("tls")
    if tls is not None:
        fields["tls"] = _read_tls(tls, base)
    if fields.get("workers", 1) == 1:
        for name, why in _NEEDS_WORKERS.items():
            if name in fields:
                reader.problem(name, f"needs server.workers above 1: {why}")
    if "max_requests_jitter" in fields and "max_requests" not in fields:
        reader.problem("max_requests_jitter", "needs max_requests")
    if fields.get("worker_timeout", _MIN_WORKER_TIMEOUT) < _MIN_WORKER_TIMEOUT:
        reader.problem("worker_timeout", "must be at least 1s")
    return ServerConfig(**fields)


def _min_version(scalar: Scalar) -> str:
    """1.2 or 1.3 (TLSv1.2 and TLS1.3 spellings too)."""
    written = scalar.text.strip().lower().removeprefix("tls").removeprefix("v")
    if written not in ("1.2", "1.3"):
        raise ValueError(f"must be 1.2 or 1.3; got {v.shown(scalar.text)}")
    return written


def _ciphers(scalar: Scalar) -> str:
    """An OpenSSL cipher list that names at least one cipher this OpenSSL has."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(scalar.text.strip())
    except ssl.SSLError:
        raise ValueError(f"OpenSSL knows no cipher in {v.shown(scalar.text)}") from None
    return scalar.text.strip()


def _read_tls(reader: Reader, base: Path) -> TlsConfig | None:
    # Imported here: loading a config without TLS needs no cryptography.
    from gatewayd.tls import TlsError, check

    path = v.path_under(base)
    cert = reader.value("cert", path, required=True)
    key = reader.value("key", path, required=True)
    fields = reader.fields(
        {"client_ca": path, "min_version": _min_version, "ciphers": _ciphers},
    )
    if cert is None or key is None:
        return None
    tls = TlsConfig(cert=cert, key=key, **fields)
    try:
        check(tls)
    except TlsError as exc:
        reader.problem(exc.key.rsplit(".", 1)[1], exc.message)
    return tls
