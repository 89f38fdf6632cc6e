"""What the guardrails did, as the audit records it."""

from __future__ import annotations

from gatewayd.audit.event import COLUMNS, AuditEvent
from gatewayd.config.schema import Action
from gatewayd.exchange import Exchange, action_of
from gatewayd.guardrails.types import Stage, Summary


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
