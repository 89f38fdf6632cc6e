"""Who a request came from, and what the guardrails did, as the audit records it."""

from __future__ import annotations

import hashlib
import ipaddress

import pytest
from aiohttp.test_utils import make_mocked_request

from gatewayd.audit.event import COLUMNS, AuditEvent
from gatewayd.config.schema import Action, ServerConfig
from gatewayd.exchange import Exchange, action_of, client_identity
from gatewayd.guardrails.types import Stage, Summary

TRUSTED = ServerConfig(trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),))


def _request(headers: dict[str, str], peer: str) -> object:
    request = make_mocked_request("POST", "/v1/chat/completions", headers=headers)
    request._transport_peername = (peer, 1234)  # type: ignore[attr-defined]
    return request


def test_bearer_key_is_hashed_never_kept() -> None:
    """A client with a key is named by a short hash of it."""
    request = _request({"Authorization": "Bearer sk-client-1"}, "192.0.2.7")
    identity = client_identity(request, TRUSTED)  # type: ignore[arg-type]
    assert identity == "key:" + hashlib.sha256(b"sk-client-1").hexdigest()[:16]
    assert "sk-client-1" not in identity


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("192.0.2.7", "", "ip:192.0.2.7"),
        ("192.0.2.7", "198.51.100.1", "ip:192.0.2.7"),
        ("10.1.2.3", "198.51.100.1", "ip:198.51.100.1"),
        ("10.1.2.3", "203.0.113.9, 198.51.100.1, 10.9.9.9", "ip:198.51.100.1"),
        ("10.1.2.3", "", "ip:10.1.2.3"),
    ],
)
def test_forwarded_for_only_from_trusted_proxies(peer: str, forwarded: str, expected: str) -> None:
    """X-Forwarded-For is believed only from a trusted peer: its right-most untrusted hop."""
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    assert client_identity(_request(headers, peer), TRUSTED) == expected  # type: ignore[arg-type]


def test_action_summarises_the_guardrails() -> None:
    """No policy is allow; the strongest action wins; a skipped filter alone is unchecked."""
    assert action_of(None) == "allow"
    summary = Summary()
    summary.unchecked.append("presidio")
    assert action_of(summary) == "unchecked"
    summary.add(Stage.INPUT, "EMAIL_ADDRESS", Action.MONITOR)
    summary.add(Stage.INPUT, "US_SSN", Action.REDACT)
    assert action_of(summary) == "redact"


def test_the_exchange_is_the_audit_event_it_records() -> None:
    """An Exchange carries every audit column itself, and its columns hold only those."""
    ex = Exchange(request_id="r", method="POST", path="/v1/x", route="v1", status=200)
    assert isinstance(ex, AuditEvent)
    assert list(ex.as_dict()) == list(COLUMNS)
    assert ex.as_dict()["route"] == "v1"
    assert "summary" not in ex.as_dict()
