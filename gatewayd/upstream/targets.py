"""The equivalent base URLs of one upstream, and which one a request goes to.

Each request starts at the next target in turn (round-robin); a retry of the
same request moves on to the following target whose breaker lets it through
(upstream/client.py), so one sick host does not take every attempt of a request.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
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
    """Round-robin over an upstream's targets."""

    __slots__ = ("_counter", "_targets")

    def __init__(self, urls: Sequence[str]) -> None:
        if not urls:
            raise ValueError("an upstream needs at least one url")
        self._targets = tuple(parse_target(url) for url in urls)
        self._counter = itertools.count()

    def __len__(self) -> int:
        return len(self._targets)

    @property
    def labels(self) -> list[str]:
        """Every target's loggable URL, in configured order."""
        return [t.label for t in self._targets]

    def first(self) -> int:
        """The starting position for a new request."""
        return next(self._counter) % len(self._targets)

    def __getitem__(self, index: int) -> Target:
        return self._targets[index]
