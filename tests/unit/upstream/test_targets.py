"""Target URLs: masking, round-robin."""

from __future__ import annotations

import pytest

from gatewayd.upstream.targets import Targets, parse_target


def test_label_hides_credentials() -> None:
    """A URL with userinfo keeps it for requests but never shows it in the label."""
    target = parse_target("https://user:hunter2@example.test/v1/")
    assert target.label == "https://example.test/v1"
    assert "hunter2" in target.base


@pytest.mark.parametrize("url", ["/v1", "ftp://example.test/", "example.test"])
def test_non_http_url_is_rejected(url: str) -> None:
    """Only absolute http(s) URLs make targets."""
    with pytest.raises(ValueError, match="absolute http"):
        parse_target(url)


def test_empty_url_list_is_rejected() -> None:
    """An upstream without targets is a configuration error."""
    with pytest.raises(ValueError, match="at least one url"):
        Targets([])


def _pick(targets: Targets) -> int:
    """Choose a target for a request that starts now and ends at once."""
    index = targets.ranked()[0]
    targets.begin(index)
    targets.end(index)
    return index


def test_idle_targets_take_turns() -> None:
    """With nothing in flight each request goes one target further on."""
    targets = Targets(["http://a", "http://b", "http://c"])
    assert [_pick(targets) for _ in range(4)] == [0, 1, 2, 0]
    assert targets[2].label == "http://c"
    assert targets.labels == ["http://a", "http://b", "http://c"]
    assert len(targets) == 3


def test_fewest_in_flight_wins_and_ties_take_turns() -> None:
    """A busy target is passed over while idle ones alternate; equally busy
    targets go to the one picked least recently."""
    targets = Targets(["http://a", "http://b", "http://c"])
    targets.begin(0)
    assert [_pick(targets) for _ in range(4)] == [1, 2, 1, 2]
    targets.begin(1)
    assert targets.ranked() == [2, 0, 1]
    targets.begin(2)
    # One each in flight: a began longest ago.
    assert targets.ranked() == [0, 1, 2]
    targets.end(1)
    assert targets.ranked()[0] == 1


def test_a_retry_prefers_untried_targets_even_if_busier() -> None:
    """Targets a request already tried come last, however idle they are."""
    targets = Targets(["http://a", "http://b", "http://c"])
    targets.begin(2)
    assert targets.ranked(tried={0, 1}) == [2, 0, 1]


def test_one_target_is_always_first() -> None:
    """A single target needs no ranking."""
    targets = Targets(["http://a"])
    targets.begin(0)
    assert targets.ranked() == [0]


def test_attempts_awaiting_an_outcome_are_counted_apart_from_load() -> None:
    """An answered attempt stops awaiting at once, while its body keeps the
    target loaded until end(); reach() marks a target connected for good."""
    targets = Targets(["http://a", "http://b"])
    assert (targets.awaiting(0), targets.reached(0)) == (0, False)
    targets.begin(0)
    targets.begin(0)
    targets.reach(0)
    targets.answered(0)
    assert (targets.awaiting(0), targets.reached(0), targets.reached(1)) == (1, True, False)
    # Still two in flight: b is the less loaded.
    assert targets.ranked()[0] == 1
    targets.end(0)
    targets.end(0)
    targets.answered(0)
    assert targets.awaiting(0) == 0
