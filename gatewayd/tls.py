"""HTTPS on the listener: its context, the certificate swapped on reload, and the client's.

    check(tls)              what is wrong with the files (unreadable, not PEM,
                            a key that is not the certificate's, expired)
    TlsListener(tls)        .context goes to the listener once; .prepare(tls)
                            reads the files again into a fresh context and
                            .swap() puts it in place; .status() for /health
    peer_subject(request)   the verified client certificate's subject, or None

Importing this module imports no metrics: the config loader uses check()
before the arbiter has chosen where prometheus_client keeps its values.

A reload never touches the context the listener holds: its SNI callback,
which OpenSSL runs on every ClientHello (with or without a server name),
points each new connection at the current context. A bad pair therefore
fails while building the new context and the old one keeps serving;
connections already open keep the certificate they shook hands with.

What the listener's own context fixes for every connection (the minimum
version, the TLS 1.2 cipher list, whether a client certificate is required)
stays as started until a restart; the files' contents (certificate, key,
client CA bundle) change on reload. Session tickets are on (OpenSSL's
default): resumption skips the full handshake for returning clients. Each
process has its own ticket keys, so a client resumes only with the worker
that issued its ticket.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization

from gatewayd.config.schema import TlsConfig

# --check-config warns this long before the certificate expires.
EXPIRY_WARNING = datetime.timedelta(days=14)

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class TlsError(Exception):
    """A certificate, key or CA file that cannot serve; `key` is its config key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What /health/detailed shows of the serving certificate (never the key)."""

    subject: str
    not_after: datetime.datetime
    fingerprint_sha256: str

    def status(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "not_after": self.not_after.isoformat(),
            "fingerprint_sha256": self.fingerprint_sha256,
        }


def check(tls: TlsConfig, now: datetime.datetime | None = None) -> CertInfo:
    """The certificate's details once every file is usable; else TlsError naming the first fault."""
    certificate = _certificates(tls.cert, "server.tls.cert")[0]
    key = _private_key(tls.key)
    if _public(certificate.public_key()) != _public(key.public_key()):
        raise TlsError("server.tls.key", f"{tls.key} does not match the certificate in {tls.cert}")
    when = now or datetime.datetime.now(datetime.UTC)
    if certificate.not_valid_after_utc <= when:
        expired = certificate.not_valid_after_utc.isoformat()
        raise TlsError("server.tls.cert", f"{tls.cert} expired on {expired}")
    if certificate.not_valid_before_utc > when:
        start = certificate.not_valid_before_utc.isoformat()
        raise TlsError("server.tls.cert", f"{tls.cert} is not valid before {start}")
    if tls.client_ca is not None:
        _certificates(tls.client_ca, "server.tls.client_ca")
    return CertInfo(
        subject=certificate.subject.rfc4514_string(),
        not_after=certificate.not_valid_after_utc,
        fingerprint_sha256=certificate.fingerprint(hashes.SHA256()).hex(),
    )


def expiry_warning(tls: TlsConfig, now: datetime.datetime | None = None) -> str | None:
    """A sentence when the certificate expires within EXPIRY_WARNING, else None."""
    info = check(tls, now)
    left = info.not_after - (now or datetime.datetime.now(datetime.UTC))
    if left > EXPIRY_WARNING:
        return None
    return (
        f"server.tls.cert: warning: {tls.cert} expires on {info.not_after.isoformat()}"
        f" (in {left.days} days)"
    )


def server_context(tls: TlsConfig) -> ssl.SSLContext:
    """A server context for `tls`; TlsError when OpenSSL refuses a file or setting."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[tls.min_version]
    if tls.ciphers is not None:
        try:
            context.set_ciphers(tls.ciphers)
        except ssl.SSLError:
            raise TlsError("server.tls.ciphers", "OpenSSL knows no cipher in this list") from None
    try:
        context.load_cert_chain(tls.cert, tls.key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError("server.tls.cert", f"{tls.cert} with {tls.key}: {_reason(exc)}") from None
    if tls.client_ca is not None:
        try:
            context.load_verify_locations(cafile=tls.client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise TlsError("server.tls.client_ca", f"{tls.client_ca}: {_reason(exc)}") from None
        # Refused in the handshake: a client without a certificate this CA
        # bundle verifies never reaches the HTTP layer.
        context.verify_mode = ssl.CERT_REQUIRED
    return context


@dataclass(frozen=True, slots=True)
class Prepared:
    """A context built from the files as they are now, not yet serving."""

    context: ssl.SSLContext
    info: CertInfo
    tls: TlsConfig


class TlsListener:
    """The listener's context, and the one new connections are pointed at."""

    def __init__(self, tls: TlsConfig) -> None:
        self._boot = tls
        first = self.prepare(tls)
        self.context = first.context
        self.context.sni_callback = self._point
        self._current = first

    @property
    def info(self) -> CertInfo:
        return self._current.info

    def prepare(self, tls: TlsConfig) -> Prepared:
        """Read `tls`'s files into a new context with the started settings; TlsError if unusable."""
        boot = self._boot
        # A client CA bundle can be replaced, not added or dropped: whether
        # clients must show a certificate is fixed in the listener's context.
        client_ca = (tls.client_ca or boot.client_ca) if boot.client_ca is not None else None
        fixed = dataclasses.replace(
            tls, min_version=boot.min_version, ciphers=boot.ciphers, client_ca=client_ca
        )
        # check() first: it says which file is wrong, OpenSSL only that something is.
        info = check(fixed)
        return Prepared(server_context(fixed), info, fixed)

    def restart_needed(self, tls: TlsConfig) -> list[str]:
        """The keys of `tls` that differ from the started ones and only a restart applies."""
        boot = self._boot
        changed = []
        if tls.min_version != boot.min_version:
            changed.append("server.tls.min_version")
        if tls.ciphers != boot.ciphers:
            changed.append("server.tls.ciphers")
        if (tls.client_ca is None) != (boot.client_ca is None):
            changed.append("server.tls.client_ca")
        return changed

    def swap(self, prepared: Prepared) -> None:
        """From now on, new connections shake hands with `prepared`'s certificate."""
        self._current = prepared

    def status(self) -> dict[str, Any]:
        """The serving certificate's subject, expiry and fingerprint, and the files it came from."""
        current = self._current
        return {
            **current.info.status(),
            "cert": str(current.tls.cert),
            "client_ca": str(current.tls.client_ca) if current.tls.client_ca else None,
            "min_version": self._boot.min_version,
        }

    def _point(self, connection: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        if connection.context is not self._current.context:
            connection.context = self._current.context


def peer_subject(request: web.BaseRequest) -> str | None:
    """The RFC 4514 subject of the client certificate verified in the handshake, or None.

    None without mutual TLS (server.tls.client_ca) or over plain HTTP; with
    it, every request has one, since the handshake refuses clients without.
    """
    transport = request.transport
    if transport is None:
        return None
    connection = transport.get_extra_info("ssl_object")
    if connection is None or connection.context.verify_mode != ssl.CERT_REQUIRED:
        return None
    der = connection.getpeercert(binary_form=True)
    return _subject(der) if der else None


@functools.lru_cache(maxsize=1024)
def _subject(der: bytes) -> str:
    # Cached by the certificate's bytes: a client sends the same one on every
    # connection, and parsing it per request would cost more than the lookup.
    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


def _read(path: Path, key: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsError(key, f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None


def _certificates(path: Path, key: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(_read(path, key))
    except ValueError:
        raise TlsError(key, f"{path} holds no PEM certificate") from None


def _private_key(path: Path) -> Any:
    data = _read(path, "server.tls.key")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TlsError(
            "server.tls.key", f"{path} is encrypted; gatewayd reads unencrypted keys only"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise TlsError("server.tls.key", f"{path} holds no PEM private key") from None


def _public(key: Any) -> bytes:
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _reason(exc: OSError | ssl.SSLError) -> str:
    """OpenSSL's reason (KEY_VALUES_MISMATCH, ...) or the OS error, never a file's bytes."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    return exc.strerror or type(exc).__name__
