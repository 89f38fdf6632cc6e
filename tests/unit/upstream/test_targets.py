"""Target URLs: joining request paths under a base path, masking, round-robin."""

from __future__ import annotations

import pytest

from gatewayd.upstream.targets import Targets, parse_target


@pytest.mark.parametrize(
    ("base", "path_qs", "expected"),
    [
        (
            "https://api.openai.com/v1",
            "/chat/completions",
            "https://api.openai.com/v1/chat/completions",
        ),
        (
            "https://api.openai.com/v1/",
            "/chat/completions",
            "https://api.openai.com/v1/chat/completions",
        ),
        ("http://127.0.0.1:8000", "/v1/models?limit=2", "http://127.0.0.1:8000/v1/models?limit=2"),
        ("http://127.0.0.1:8000/", "/", "http://127.0.0.1:8000/"),
        ("http://h/base", "models", "http://h/base/models"),
    ],
)
def test_path_is_appended_to_base_path_without_double_slash(
    base: str, path_qs: str, expected: str
) -> None:
    """The request path lands under the target's path with exactly one slash between."""
    assert str(parse_target(base).url(path_qs)) == expected


def test_encoded_path_and_query_are_sent_unchanged() -> None:
    """Percent-escapes from the client are neither decoded nor quoted twice."""
    url = parse_target("http://h/v1").url("/files/a%2Fb?q=x%20y&e=%3D")
    assert url.raw_path == "/v1/files/a%2Fb"
    assert url.raw_query_string == "q=x%20y&e=%3D"


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
