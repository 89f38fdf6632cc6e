"""What filters find and what the pipeline decides.

Two kinds of filter share one shape of result, a list of `Span`:

* `InlineFilter` is CPU-bound (regexes, word lists) and runs synchronously in
  microseconds; the pipeline calls it without awaiting anything.
* `RemoteFilter` calls a service (Presidio). It gets every text of a request in
  one batch, can time out or fail (it raises `FilterError`), and is
  the only thing the pipeline awaits.

A block is a `Verdict`, not an exception: exceptions are for failures.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from gatewayd.config.schema import Action, OnError
from gatewayd.errors import (
    BadRequest,
    GuardrailUnavailable,
    GuardrailViolation,
    HTTPError,
    UnreadableAnswer,
)


class Stage(enum.Enum):
    INPUT = "input"
    OUTPUT = "output"


@dataclass(frozen=True, slots=True)
class Span:
    """One finding in one text: [start, end) in code points, not bytes."""

    entity: str
    start: int
    end: int
    score: float = 1.0


@runtime_checkable
class InlineFilter(Protocol):
    """A filter that scans one text synchronously."""

    name: str
    on_error: OnError | None

    def scan(self, text: str) -> list[Span]:
        """Return the spans found in `text`, ordered by start, not overlapping."""
        ...

    def holdback(self, text: str) -> int:
        """How many trailing characters of a growing stream could still become
        (or extend) a match once more text arrives; they are held back."""
        ...


@runtime_checkable
class RemoteFilter(Protocol):
    """A filter that asks a service about many texts in one call."""

    name: str
    on_error: OnError | None

    async def scan_batch(self, texts: Sequence[str]) -> list[list[Span]]:
        """Spans for each text, in order; raises FilterError on failure."""
        ...


Filter = InlineFilter | RemoteFilter


@dataclass(frozen=True, slots=True)
class FilterHealth:
    """A remote filter's service as /health/detailed shows it; `error` is a FilterError kind."""

    healthy: bool
    latency_ms: float | None
    breaker: str
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Location:
    """Where in an API payload a text sits, for messages: `messages[2].content`."""

    field: str


@dataclass(slots=True)
class Summary:
    """What a request's guardrails found: entity counts per stage, no values."""

    counts: dict[Stage, dict[str, int]] = field(default_factory=dict)
    action: Action | None = None
    # Filters that failed with on_error=allow: the text passed unchecked.
    unchecked: list[str] = field(default_factory=list)

    def add(self, stage: Stage, entity: str, action: Action) -> None:
        per_stage = self.counts.setdefault(stage, {})
        per_stage[entity] = per_stage.get(entity, 0) + 1
        if self.action is None or _SEVERITY[action] > _SEVERITY[self.action]:
            self.action = action

    def as_dict(self) -> dict[str, object]:
        """The JSON-able form the audit event stores."""
        out: dict[str, object] = {s.value: dict(c) for s, c in self.counts.items()}
        if self.unchecked:
            out["unchecked"] = list(self.unchecked)
        return out

    def header(self) -> str:
        """Compact form for the optional X-Gatewayd-Guardrail response header."""
        parts = []
        for stage, counts in self.counts.items():
            inner = ",".join(f"{e}:{n}" for e, n in sorted(counts.items()))
            parts.append(f"{stage.value}={inner}")
        if self.action is not None:
            parts.append(f"action={self.action.value}")
        return "; ".join(parts)


_SEVERITY = {Action.MONITOR: 0, Action.REDACT: 1, Action.BLOCK: 2}


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of inspecting one payload.

    `blocked` names what blocked it (for the 400 message: policy, entity types,
    fields; never a value); `unavailable` names the filter whose failure made
    an on_error=block policy refuse the request (503); `unknown` names fields
    (or the endpoint) the policy cannot read, with `unknown: block`.
    """

    blocked: tuple[str, ...] = ()
    blocked_fields: tuple[str, ...] = ()
    unavailable: str | None = None
    unknown: tuple[str, ...] = ()

    @property
    def allowed(self) -> bool:
        return not self.blocked and self.unavailable is None and not self.unknown

    def as_error(self, policy: str, stage: str) -> HTTPError | None:
        """What the client is told when this verdict refuses `stage` ("request" or
        "response"): entity types and fields, never a value. None when allowed."""
        if self.unavailable is not None:
            return GuardrailUnavailable(
                f"guardrail filter '{self.unavailable}' of policy '{policy}' is unavailable"
            )
        if self.unknown:
            what = ", ".join(self.unknown)
            message = f"policy '{policy}' cannot read the {stage}: {what}"
            if stage == "request":
                return BadRequest(message, code="unsupported_request")
            return UnreadableAnswer(message)
        if self.blocked:
            fields = f" in {', '.join(self.blocked_fields)}" if self.blocked_fields else ""
            return GuardrailViolation(
                f"{stage} blocked by policy '{policy}': {', '.join(self.blocked)}{fields}"
            )
        return None


ALLOW = Verdict()
