"""What a policy does with spans: count them, redact them, or block.

`Applier` is the one place findings turn into actions, for whole bodies and
streams alike. Ranges of text the gateway itself wrote (placeholders a filter
earlier in the chain put in, values restored from placeholders) are
"protected": a span touching one is dropped, so nothing is redacted or counted
twice.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Protocol, runtime_checkable

from prometheus_client import Counter

from gatewayd.config.schema import Action, Mode, PolicyConfig
from gatewayd.errors import FilterError
from gatewayd.guardrails.placeholders import Range, Redactions
from gatewayd.guardrails.types import Filter, InlineFilter, RemoteFilter, Span, Stage, Summary
from gatewayd.observability.metrics import FILTER_DURATION, FILTER_ERRORS, GUARDRAIL_FINDINGS

log = logging.getLogger(__name__)

_RANGE_START = itemgetter(0)
_MODE_ACTION = {Mode.MONITOR: Action.MONITOR, Mode.REDACT: Action.REDACT, Mode.BLOCK: Action.BLOCK}

# Label values are config names and fixed words, so this stays small; a
# resolved child skips prometheus_client's label lookup on every finding.
_FINDINGS: dict[tuple[str, str, Stage, Action], Counter] = {}


def _count_finding(filter_name: str, entity: str, stage: Stage, action: Action) -> None:
    key = (filter_name, entity, stage, action)
    child = _FINDINGS.get(key)
    if child is None:
        child = _FINDINGS[key] = GUARDRAIL_FINDINGS.labels(
            filter_name, entity, stage.value, action.value
        )
    child.inc()


class Located(Protocol):
    """Something that can name the field its text came from."""

    @property
    def location(self) -> str:
        """The field, as `messages[1].content`."""
        ...


@runtime_checkable
class OpenTail(Protocol):
    """An inline filter that can also give its holdback before it is widened to
    keep finished findings whole: a stream buffer, which has the findings at
    hand, widens it itself and so saves the filter a second scan."""

    def open_tail(self, text: str) -> int:
        """The trailing characters that could still grow into a finding."""
        ...


class Rules:
    """A policy's actions per entity, resolved once per config generation."""

    __slots__ = ("default", "monitor_only", "overrides", "policy")

    def __init__(self, policy: PolicyConfig) -> None:
        self.policy = policy.name
        self.default = _MODE_ACTION.get(policy.mode, Action.MONITOR)
        self.overrides = dict(policy.entities)
        # No finding can change text or refuse it, only be counted.
        self.monitor_only = all(
            action is Action.MONITOR for action in (self.default, *self.overrides.values())
        )


class CompiledFilter:
    """A filter with what the pipeline needs about it looked up once."""

    __slots__ = ("inline", "name", "on_error", "open_tail", "remote", "timer")

    def __init__(self, filter_: Filter, policy: PolicyConfig) -> None:
        self.name = filter_.name
        # Exactly one of the two is set; the protocol check runs here, once.
        self.inline: InlineFilter | None = None
        self.remote: RemoteFilter | None = None
        self.open_tail: Callable[[str], int] | None = None
        if isinstance(filter_, InlineFilter):
            self.inline = filter_
            if isinstance(filter_, OpenTail):
                self.open_tail = filter_.open_tail
        elif isinstance(filter_, RemoteFilter):
            self.remote = filter_
        else:
            raise TypeError(f"filter {filter_.name!r} is neither inline nor remote")
        self.on_error = filter_.on_error or policy.on_error
        self.timer = FILTER_DURATION.labels(filter_.name)

    def failed(self, exc: FilterError, summary: Summary) -> bool:
        """Apply on_error to a remote failure; True means the payload is refused."""
        FILTER_ERRORS.labels(self.name, exc.kind, self.on_error).inc()
        # The kind is a fixed word; the exception's message is left out
        # because a service's error text may echo what it was sent.
        log.warning(
            "guardrail filter %s failed (%s); on_error=%s", self.name, exc.kind, self.on_error
        )
        if self.on_error == "block":
            return True
        if self.name not in summary.unchecked:
            summary.unchecked.append(self.name)
        return False


class Applier:
    """Applies one policy's actions to spans found at one stage of one request."""

    __slots__ = (
        "_count",
        "_default",
        "_overrides",
        "_redactions",
        "_stage",
        "_summary",
        "blocked",
        "fields",
    )

    def __init__(
        self,
        rules: Rules,
        stage: Stage,
        summary: Summary,
        redactions: Redactions,
        count: bool = True,
    ) -> None:
        # False for text read a second time (a stream repeating its deltas
        # whole): acted on alike, counted once.
        self._count = count
        self._default = rules.default
        self._overrides = rules.overrides
        self._stage = stage
        self._summary = summary
        self._redactions = redactions
        self.blocked: list[str] = []
        # The fields once each, in order: a dict, as a request may have many.
        self.fields: dict[str, None] = {}

    def apply(
        self,
        filter_name: str,
        text: str,
        spans: Sequence[Span],
        protected: Sequence[Range],
        where: Located,
        offset: int = 0,
    ) -> tuple[str, Sequence[Range]]:
        """Act on `spans` (shifted left by `offset`) in `text`.

        Returns the text with redacted spans replaced by placeholders (`text`
        itself when none were) and the protected ranges moved to match, the
        new placeholders among them.
        """
        edits: list[tuple[int, int, str]] = []
        last = 0
        for span in spans:
            start = span.start - offset
            end = span.end - offset
            if start < last or (protected and _touches(protected, start, end)):
                continue
            last = end
            entity = span.entity
            action = self._overrides.get(entity, self._default)
            if self._count:
                self._summary.add(self._stage, entity, action)
                _count_finding(filter_name, entity, self._stage, action)
            if action is Action.REDACT:
                placeholder = self._redactions.placeholder(entity, text[start:end])
                edits.append((start, end, placeholder))
            elif action is Action.BLOCK:
                self.blocked.append(entity)
                self.fields[where.location] = None
        if not edits:
            return text, protected
        return _rewrite(text, edits, protected)

    def verdict_parts(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The blocking entity types (sorted, once each) and the fields they were in."""
        return tuple(sorted(set(self.blocked))), tuple(self.fields)


def _touches(protected: Sequence[Range], start: int, end: int) -> bool:
    """Whether [start, end) overlaps one of the sorted, disjoint `protected` ranges.

    Every span of an answer with placeholders gets here: comparing it with
    each range cost spans times ranges (8,000 values took a second). Of the
    ranges starting before `end`, the last one also ends last.
    """
    i = bisect_left(protected, end, key=_RANGE_START)
    return i > 0 and protected[i - 1][1] > start


def _rewrite(
    text: str, edits: list[tuple[int, int, str]], protected: Sequence[Range]
) -> tuple[str, list[Range]]:
    """Apply sorted, disjoint edits; protected ranges never overlap an edit."""
    pieces: list[str] = []
    ranges: list[Range] = []
    queue = iter(protected)
    pending = next(queue, None)
    pos = 0
    delta = 0
    for start, end, replacement in edits:
        while pending is not None and pending[0] < start:
            ranges.append((pending[0] + delta, pending[1] + delta))
            pending = next(queue, None)
        pieces.append(text[pos:start])
        pieces.append(replacement)
        ranges.append((start + delta, start + delta + len(replacement)))
        delta += len(replacement) - (end - start)
        pos = end
    pieces.append(text[pos:])
    while pending is not None:
        ranges.append((pending[0] + delta, pending[1] + delta))
        pending = next(queue, None)
    return "".join(pieces), ranges
