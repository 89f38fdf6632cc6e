"""Who is asking: computed once per request, before anything else reads it.

The audit event, the access log and the rate limiter all take the one
`Identity` made here. A known client (its bearer key's sha256 is some
`clients.NAME.key_sha256`, or its verified client certificate's subject some
`clients.NAME.tls_subject`) is named by its name; anyone else by a short hash
of their bearer key, or their address. Keys themselves are never kept.

What a budget is keyed by follows `ratelimit.key`, except that a known
client always spends its own budget. `key: client` keys an unknown caller by
address, not by the key it sent: a client rotating made-up keys would
otherwise get a fresh budget per key.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping
from typing import NamedTuple

from aiohttp import web

from gatewayd.config.schema import ClientConfig, Config, ServerConfig
from gatewayd.tls import peer_subject


class Identity(NamedTuple):
    # For the audit event and the access log: client:NAME, key:HASH or ip:ADDRESS.
    name: str
    client: ClientConfig | None
    # Whose budget the request spends (see the module docstring).
    limit_key: str
    # Whether the request carried a bearer key at all.
    has_key: bool


class Clients:
    """The configured clients, looked up by their key's digest; built per config generation."""

    __slots__ = ("_by_digest", "_by_subject", "_models")

    def __init__(self, clients: Mapping[str, ClientConfig]) -> None:
        self._by_digest = {c.key_sha256: c for c in clients.values() if c.key_sha256}
        self._by_subject = {c.tls_subject: c for c in clients.values() if c.tls_subject}
        self._models = {
            c.name: _ModelList(c.models) for c in clients.values() if c.models is not None
        }

    def by_digest(self, digest: str) -> ClientConfig | None:
        return self._by_digest.get(digest)

    @property
    def by_certificate(self) -> bool:
        """Whether any client is known by its certificate's subject."""
        return bool(self._by_subject)

    def by_subject(self, subject: str) -> ClientConfig | None:
        return self._by_subject.get(subject)

    def allows(self, client: ClientConfig, model: str) -> bool:
        """Whether `client` may ask for `model` (any model without a `models` list)."""
        models = self._models.get(client.name)
        return models is None or models.allows(model)


class _ModelList:
    __slots__ = ("_exact", "_prefixes")

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self._exact = frozenset(p for p in patterns if not p.endswith("*"))
        self._prefixes = tuple(p[:-1] for p in patterns if p.endswith("*"))

    def allows(self, model: str) -> bool:
        return model in self._exact or model.startswith(self._prefixes)


def identify(request: web.Request, config: Config, clients: Clients) -> Identity:
    """The identity of `request` under `config`."""
    key = bearer_key(request)
    digest = hashlib.sha256(key.encode()).hexdigest() if key is not None else None
    client = clients.by_digest(digest) if digest is not None else None
    how = config.ratelimit.key
    subject = None
    if clients.by_certificate or how == "tls_subject":
        subject = peer_subject(request)
    if client is None and subject is not None:
        client = clients.by_subject(subject)
    if client is not None:
        name = f"client:{client.name}"
        return Identity(name, client, name, True)
    address = "ip:" + peer_address(request, config.server)
    name = f"key:{digest[:16]}" if digest is not None else address
    if how == "api_key" and digest is not None:
        limit_key = f"key:{digest[:32]}"
    elif how == "tls_subject" and subject is not None:
        limit_key = "tls:" + hashlib.sha256(subject.encode()).hexdigest()[:32]
    elif how.startswith("header:") and (value := request.headers.get(how[7:])):
        limit_key = "header:" + hashlib.sha256(value.encode()).hexdigest()[:32]
    else:
        limit_key = address
    return Identity(name, None, limit_key, digest is not None)


def bearer_key(request: web.Request) -> str | None:
    """The key of an `Authorization: Bearer KEY` header, or None."""
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer " and (key := auth[7:].strip()):
        return key
    return None


def peer_address(request: web.Request, server: ServerConfig) -> str:
    """The client's address: the socket's peer, or, from a trusted proxy only,
    the right-most X-Forwarded-For hop that is not itself a trusted proxy."""
    peer = request.remote or ""
    if server.trusted_proxies and _trusted(peer, server):
        for hop in reversed(request.headers.get("X-Forwarded-For", "").split(",")):
            hop = hop.strip()
            if hop and not _trusted(hop, server):
                return hop
    return peer


def _trusted(address: str, server: ServerConfig) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in server.trusted_proxies)
