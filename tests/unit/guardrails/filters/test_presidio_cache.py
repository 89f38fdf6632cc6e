"""The Presidio result cache: keys, the bounded LRU with expiry, the Redis value format."""

from __future__ import annotations

import pytest

from gatewayd.config.schema import PresidioFilterConfig
from gatewayd.guardrails.filters.presidio_cache import KeyMaker, MemoryCache, decode, encode
from gatewayd.guardrails.types import Span

SPANS = (Span("EMAIL_ADDRESS", 3, 20, 1.0), Span("IBAN_CODE", 25, 52, 0.85))


class Clock:
    """A clock the test steps by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def config(**overrides: object) -> PresidioFilterConfig:
    """A filter config with test defaults."""
    return PresidioFilterConfig(name="p", url="http://127.0.0.1:5002", **overrides)  # type: ignore[arg-type]


def test_key_is_stable_and_depends_on_text() -> None:
    """The same text gives the same hex sha256; another text another one."""
    key = KeyMaker(config())
    assert key("héllo 😀") == key("héllo 😀")
    assert key("héllo 😀") != key("hello")
    assert len(key("x")) == 64
    assert set(key("x")) <= set("0123456789abcdef")


@pytest.mark.parametrize(
    "overrides",
    [
        {"language": "de"},
        {"entities": ("EMAIL_ADDRESS",)},
        {"score_threshold": 0.7},
        {"allow_list": ("me@example.com",)},
    ],
)
def test_key_depends_on_analysis_parameters(overrides: dict[str, object]) -> None:
    """A result found under other parameters is not reused."""
    assert KeyMaker(config(**overrides))("text") != KeyMaker(config())("text")


def test_key_ignores_order_of_entities_and_allow_list() -> None:
    """Listing the same entities in another order shares the cache."""
    one = KeyMaker(config(entities=("A", "B"), allow_list=("x", "y")))
    other = KeyMaker(config(entities=("B", "A"), allow_list=("y", "x")))
    assert one("text") == other("text")


def test_key_hashes_lone_surrogates() -> None:
    """A text with a lone surrogate still gets a key instead of an encoding error."""
    assert len(KeyMaker(config())("bad \ud800 text")) == 64


def test_memory_cache_returns_what_was_stored() -> None:
    """A stored result comes back; an unknown key is None."""
    cache = MemoryCache(10, 60)
    cache.put("k", SPANS)
    assert cache.get("k") == SPANS
    assert cache.get("other") is None


def test_memory_cache_entries_expire() -> None:
    """An entry is gone once ttl seconds have passed since it was stored."""
    clock = Clock()
    cache = MemoryCache(10, 60, clock=clock)
    cache.put("k", SPANS)
    clock.now += 59.9
    assert cache.get("k") == SPANS
    clock.now += 0.1
    assert cache.get("k") is None
    assert len(cache) == 0


def test_memory_cache_evicts_least_recently_used() -> None:
    """Past the bound, the entry read or written longest ago goes first."""
    cache = MemoryCache(2, 60)
    cache.put("a", ())
    cache.put("b", ())
    assert cache.get("a") == ()
    cache.put("c", ())
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == ((), None, ())
    assert len(cache) == 2


@pytest.mark.parametrize(("size", "ttl"), [(0, 60), (10, 0)])
def test_memory_cache_can_be_turned_off(size: int, ttl: float) -> None:
    """A size or ttl of zero stores nothing."""
    cache = MemoryCache(size, ttl)
    cache.put("k", SPANS)
    assert cache.get("k") is None


def test_redis_values_round_trip_without_text() -> None:
    """Spans survive encoding for Redis; an empty result is a value too, not a miss."""
    assert decode(encode(SPANS)) == SPANS
    assert decode(encode(())) == ()
    assert b"EMAIL_ADDRESS" in encode(SPANS)


@pytest.mark.parametrize("value", [None, b"not json", b'{"a": 1}', b'[["E", 1]]', b"[1]"])
def test_unreadable_redis_values_are_misses(value: bytes | None) -> None:
    """Missing, truncated or foreign values read as a miss rather than an error."""
    assert decode(value) is None
