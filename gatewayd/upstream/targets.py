"""The equivalent base URLs of one upstream, and which one a request goes to.

A request goes to the target with the fewest requests in flight, ties to the
one picked least recently (round-robin), so a slow target gets less of the load; a retry of the
same request prefers a target it has not tried (upstream/client.py asks each
one's breaker in this order), so one sick host does not take every attempt.

Each target also counts its attempts still awaiting an outcome and whether a
connection to it was ever made: what upstream/client.py caps a target that
has not proven itself by, so one that fails fast (and so always looks idle)
is not handed more attempts than its breaker's failure_threshold.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from yarl import URL


@dataclass(frozen=True, slots=True)
class Target:
    """One base URL; `label` is the same URL without credentials, safe to log."""

    base: str
    label: str


def parse_target(url: str) -> Target:
    """A Target from a configured URL; the trailing slash of its path is dropped."""
    parsed = URL(url)
    if not parsed.absolute or parsed.scheme not in ("http", "https"):
        raise ValueError("upstream url must be an absolute http(s) URL")
    # A base path's trailing slash would double up with the request path's leading one.
    base = str(parsed.with_query(None).with_fragment(None)).rstrip("/")
    label = str(parsed.with_user(None).with_query(None).with_fragment(None)).rstrip("/")
    return Target(base=base, label=label)


class Targets:
    """An upstream's targets and the requests each has in flight."""

    __slots__ = ("_awaiting", "_counter", "_last", "_loads", "_reached", "_targets")

    def __init__(self, urls: Sequence[str]) -> None:
        if not urls:
            raise ValueError("an upstream needs at least one url")
        self._targets = tuple(parse_target(url) for url in urls)
        self._counter = itertools.count()
        self._loads = [0] * len(self._targets)
        # When each target last got a request, in _counter's ticks.
        self._last = [-1] * len(self._targets)
        self._awaiting = [0] * len(self._targets)
        self._reached = [False] * len(self._targets)

    def __len__(self) -> int:
        return len(self._targets)

    @property
    def labels(self) -> list[str]:
        """Every target's loggable URL, in configured order."""
        return [t.label for t in self._targets]

    def ranked(self, tried: Collection[int] = ()) -> list[int]:
        """Every position, best first: untried, then fewest in flight, then
        least recently begun."""
        count = len(self._targets)
        if count == 1:
            return [0]
        loads, last = self._loads, self._last
        return sorted(range(count), key=lambda i: (i in tried, loads[i], last[i]))

    def begin(self, index: int) -> None:
        """An attempt on the target at `index` starts."""
        self._loads[index] += 1
        self._awaiting[index] += 1
        self._last[index] = next(self._counter)

    def answered(self, index: int) -> None:
        """An attempt on the target at `index` has its outcome (headers or a failure)."""
        self._awaiting[index] -= 1

    def end(self, index: int) -> None:
        """A request to the target at `index` is over (its body read or dropped)."""
        self._loads[index] -= 1

    def awaiting(self, index: int) -> int:
        """Attempts on the target at `index` begun and not yet answered."""
        return self._awaiting[index]

    def reach(self, index: int) -> None:
        """A connection to the target at `index` was made."""
        self._reached[index] = True

    def reached(self, index: int) -> bool:
        """Was a connection to the target at `index` ever made?"""
        return self._reached[index]

    def __getitem__(self, index: int) -> Target:
        return self._targets[index]
