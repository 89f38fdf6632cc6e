"""Who a request came from, computed once: client name, key hash or address, and its budget key."""

from __future__ import annotations

import hashlib
import ipaddress
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from gatewayd.config.schema import (
    ClientConfig,
    Config,
    RateLimitConfig,
    ServerConfig,
)
from gatewayd.identity import Clients, identify, peer_address

TRUSTED = ServerConfig(trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),))
KEY = "sk-app-1"
APP = ClientConfig(name="app", key_sha256=hashlib.sha256(KEY.encode()).hexdigest())


def _request(headers: dict[str, str], peer: str = "192.0.2.7") -> web.Request:
    request = make_mocked_request("POST", "/v1/chat/completions", headers=headers)
    request._transport_peername = (peer, 1234)  # type: ignore[attr-defined]
    return request


def _config(key: str = "client") -> Config:
    return Config(source=Path("x.yaml"), server=TRUSTED, ratelimit=RateLimitConfig(key=key))


CLIENTS = Clients({"app": APP})


def test_a_known_key_is_its_client() -> None:
    """A bearer key whose sha256 is configured names that client, for audit and budget alike."""
    identity = identify(_request({"Authorization": f"Bearer {KEY}"}), _config("ip"), CLIENTS)
    assert identity.client is APP
    assert identity.name == identity.limit_key == "client:app"


def test_an_unknown_key_is_hashed_never_kept() -> None:
    """An unknown key is named by a short hash of it; the key itself appears nowhere."""
    identity = identify(_request({"Authorization": "Bearer sk-other"}), _config(), CLIENTS)
    assert identity.client is None
    assert identity.has_key
    assert identity.name == "key:" + hashlib.sha256(b"sk-other").hexdigest()[:16]
    assert "sk-other" not in repr(identity)


def test_rotating_made_up_keys_does_not_buy_budgets_under_key_client() -> None:
    """With key: client, unknown keys all spend their address's budget, not one budget per key."""
    keys = {
        identify(_request({"Authorization": f"Bearer sk-{n}"}), _config(), CLIENTS).limit_key
        for n in range(5)
    }
    assert keys == {"ip:192.0.2.7"}


def test_api_key_mode_budgets_each_bearer_key() -> None:
    """key: api_key gives every bearer key its own budget, and keyless callers their address's."""
    config = _config("api_key")
    one = identify(_request({"Authorization": "Bearer a"}), config, CLIENTS).limit_key
    two = identify(_request({"Authorization": "Bearer b"}), config, CLIENTS).limit_key
    none = identify(_request({}), config, CLIENTS).limit_key
    assert one != two
    assert one.startswith("key:")
    assert none == "ip:192.0.2.7"


def test_header_mode_hashes_the_header_value() -> None:
    """key: header:NAME budgets by that header's value, hashed; without it, by address."""
    config = _config("header:x-tenant")
    tenant = identify(_request({"X-Tenant": "acme"}), config, CLIENTS).limit_key
    assert tenant == "header:" + hashlib.sha256(b"acme").hexdigest()[:32]
    assert identify(_request({}), config, CLIENTS).limit_key == "ip:192.0.2.7"


def test_model_lists_take_names_and_prefixes() -> None:
    """A models list allows exact names and `prefix*` patterns, nothing else."""
    client = ClientConfig(name="c", key_sha256="0" * 64, models=("gpt-4o-mini", "text-embedding-*"))
    clients = Clients({"c": client})
    assert clients.allows(client, "gpt-4o-mini")
    assert clients.allows(client, "text-embedding-3-small")
    assert not clients.allows(client, "gpt-4o")
    assert not clients.allows(client, "gpt-4o-mini-2024")
    assert clients.allows(APP, "anything")


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("192.0.2.7", "", "192.0.2.7"),
        ("192.0.2.7", "198.51.100.1", "192.0.2.7"),
        ("10.1.2.3", "198.51.100.1", "198.51.100.1"),
        ("10.1.2.3", "203.0.113.9, 198.51.100.1, 10.9.9.9", "198.51.100.1"),
        ("10.1.2.3", "", "10.1.2.3"),
    ],
)
def test_forwarded_for_only_from_trusted_proxies(peer: str, forwarded: str, expected: str) -> None:
    """X-Forwarded-For is believed only from a trusted peer: its right-most untrusted hop."""
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    assert peer_address(_request(headers, peer), TRUSTED) == expected
