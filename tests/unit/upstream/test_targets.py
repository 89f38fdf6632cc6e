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


def test_requests_rotate_over_the_targets() -> None:
    """Each request starts one target further on, and a position names its target."""
    targets = Targets(["http://a", "http://b", "http://c"])
    starts = [targets.first() for _ in range(4)]
    assert starts == [0, 1, 2, 0]
    assert targets[2].label == "http://c"
    assert targets.labels == ["http://a", "http://b", "http://c"]
    assert len(targets) == 3
