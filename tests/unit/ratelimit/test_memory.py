"""The memory backend: all-or-nothing decisions, concurrency slots, bounded keys."""

from __future__ import annotations

import sys

from gatewayd.ratelimit.backend import Ask
from gatewayd.ratelimit.gcra import Rate
from gatewayd.ratelimit.memory import MemoryBackend


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _ask(key: str = "*:ip:1", **kw: object) -> Ask:
    fields: dict[str, object] = {
        "key": key,
        "requests": Rate.per_minute(60, 2),
        "tokens": None,
        "cost": 0,
        "max_concurrent": 0,
        "lease": "l",
        "lease_for": 60.0,
    }
    fields.update(kw)
    return Ask(**fields)  # type: ignore[arg-type]


def test_a_token_refusal_takes_no_request() -> None:
    """A request refused for tokens leaves its request budget untouched."""
    backend = MemoryBackend(1000, Clock())
    ask = _ask(tokens=Rate.per_minute(100, 100), cost=80)
    assert backend.decide(ask).refused is None
    assert backend.decide(ask).refused == "tokens"
    # Two requests at once were allowed; only one was taken, so one is left.
    assert backend.decide(_ask()).refused is None
    assert backend.decide(_ask()).refused == "requests"


def test_settling_gives_unused_tokens_back() -> None:
    """A reservation settled to what was used frees the rest at once."""
    backend = MemoryBackend(1000, Clock())
    ask = _ask(requests=None, tokens=Rate.per_minute(100, 100), cost=90)
    assert backend.decide(ask).refused is None
    assert backend.decide(ask).refused == "tokens"
    backend.give_back(ask, 10)
    assert backend.decide(ask).refused is None


def test_concurrency_slots_are_given_back() -> None:
    """max_concurrent refuses the next request in flight until one ends."""
    backend = MemoryBackend(1000, Clock())
    ask = _ask(requests=None, max_concurrent=2)
    assert backend.decide(ask).refused is None
    assert backend.decide(ask).refused is None
    assert backend.decide(ask).refused == "concurrency"
    backend.give_back(ask, None)
    assert backend.decide(ask).refused is None


def test_idle_keys_expire_as_new_ones_come() -> None:
    """Keys whose budget is whole again are dropped, so only active keys stay held."""
    clock = Clock()
    backend = MemoryBackend(1_000_000, clock)
    for n in range(1000):
        backend.decide(_ask(f"*:ip:{n}"))
    clock.now += 120  # every budget whole again
    for n in range(1000, 2000):
        backend.decide(_ask(f"*:ip:{n}"))
    assert backend.keys() <= 1000 + 2


def test_a_million_keys_stay_within_the_stated_bound() -> None:
    """A million distinct active keys never hold more than max_keys, in under 200 MB."""
    backend = MemoryBackend(1_000_000, Clock())
    for n in range(1_050_000):
        backend.decide(_ask(f"*:ip:10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"))
    assert backend.keys() <= 1_000_000
    assert _size(backend) < 200 * 1024 * 1024


def _size(backend: MemoryBackend) -> int:
    """Bytes the backend's budgets hold: the dicts, their keys and their values."""
    budgets = (backend._requests, backend._tokens, backend._inflight)
    return sum(
        sys.getsizeof(d) + sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in d.items())
        for d in budgets
    )
