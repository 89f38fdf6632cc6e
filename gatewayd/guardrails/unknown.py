"""What a policy does with what no shape describes: an endpoint, a field, an event.

Apart from the types (gatewayd.guardrails.types) because it counts: loading a
config imports the filters and their types, and nothing may import the
metrics before the arbiter has chosen where they are kept (cli._serve).
"""

from __future__ import annotations

from collections.abc import Sequence

from gatewayd.config.schema import Action, OnError
from gatewayd.guardrails.types import ALLOW, Stage, Summary, Verdict
from gatewayd.observability.metrics import GUARDRAIL_UNKNOWN

UNKNOWN = "unknown"
"""What `Summary.unchecked` names when something no shape describes passed unread."""
# Unknown fields named in one message: the client gets a sample, not a list.
_NAMED = 5


def unknown_verdict(
    policy: str, unknown: OnError, stage: Stage, fields: Sequence[str], summary: Summary
) -> Verdict:
    """A policy's answer to what it cannot read: refuse it, or pass it marked unchecked."""
    if unknown == "block":
        GUARDRAIL_UNKNOWN.labels(policy, stage.value, "refused").inc()
        # The audit and access log say what was done: the payload was refused.
        summary.action = Action.BLOCK
        return Verdict(unknown=tuple(fields[:_NAMED]))
    GUARDRAIL_UNKNOWN.labels(policy, stage.value, "passed").inc()
    if UNKNOWN not in summary.unchecked:
        summary.unchecked.append(UNKNOWN)
    return ALLOW
