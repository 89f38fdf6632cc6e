"""Path normalisation and longest-prefix matching."""

from __future__ import annotations

import pytest

from gatewayd.config.schema import RouteConfig
from gatewayd.errors import BadRequest
from gatewayd.routing import RouteTable, normalize_path


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/v1/chat/completions", "/v1/chat/completions"),
        ("/v1//chat///completions", "/v1/chat/completions"),
        ("/v1/./chat/../chat/completions", "/v1/chat/completions"),
        ("/v1/models/", "/v1/models/"),
        ("/%76%31/models", "/v1/models"),
        ("/v1/%2e%2e/admin", "/admin"),
        ("/v1/a%20b", "/v1/a%20b"),
        ("/v1/a%7eb", "/v1/a~b"),
        ("/v1/x/..", "/v1/"),
    ],
)
def test_normalize_path(raw: str, expected: str) -> None:
    """Dot segments, duplicate slashes and encoded unreserved characters have one spelling."""
    assert normalize_path(raw) == expected


@pytest.mark.parametrize(
    "raw", ["/v1/a%2Fb", "/v1/a%2fb", "/v1/a%5Cb", "/../etc/passwd", "/v1/../../x"]
)
def test_normalize_path_refuses(raw: str) -> None:
    """Encoded slashes and climbs above the root are refused, not guessed at."""
    with pytest.raises(BadRequest):
        normalize_path(raw)


@pytest.mark.parametrize(
    "raw", ["http://api.openai.com/v1/chat/completions", "*", "api.openai.com:443", "v1/models", ""]
)
def test_normalize_path_refuses_targets_that_are_not_paths(raw: str) -> None:
    """Absolute-form, asterisk-form and authority-form targets are refused, not read as paths."""
    with pytest.raises(BadRequest) as caught:
        normalize_path(raw)
    assert caught.value.code == "invalid_request_target"


def _table(*routes: tuple[str, str, bool]) -> RouteTable:
    return RouteTable(
        RouteConfig(name=name, prefix=prefix, upstream="u", strip_prefix=strip)
        for name, prefix, strip in routes
    )


def test_longest_prefix_wins() -> None:
    """A more specific prefix takes precedence over a shorter one, whatever the order."""
    table = _table(("all", "/", False), ("v1", "/v1/", False), ("chat", "/v1/chat/", False))
    assert table.match("/v1/chat/completions").route.name == "chat"  # type: ignore[union-attr]
    assert table.match("/v1/models").route.name == "v1"  # type: ignore[union-attr]
    assert table.match("/other").route.name == "all"  # type: ignore[union-attr]


def test_prefix_matches_whole_segments() -> None:
    """'/v1' matches '/v1' and '/v1/...' but never '/v1beta'."""
    table = _table(("v1", "/v1", False))
    assert table.match("/v1") is not None
    assert table.match("/v1/models") is not None
    assert table.match("/v1beta/models") is None


def test_no_match_is_none() -> None:
    """A path outside every prefix has no route (the proxy answers 404)."""
    assert _table(("v1", "/v1/", False)).match("/v2/models") is None


@pytest.mark.parametrize(
    ("prefix", "path", "expected"),
    [
        ("/v1/", "/v1/chat/completions", "/chat/completions"),
        ("/v1", "/v1/chat/completions", "/chat/completions"),
        ("/openai/", "/openai", "/"),
    ],
)
def test_strip_prefix(prefix: str, path: str, expected: str) -> None:
    """strip_prefix removes the prefix and keeps a leading slash."""
    match = _table(("r", prefix, True)).match(path)
    assert match is not None
    assert match.upstream_path == expected


def test_without_strip_prefix_the_whole_path_goes_upstream() -> None:
    """Without strip_prefix the upstream sees the normalised request path."""
    match = _table(("r", "/v1/", False)).match("/v1/models")
    assert match is not None
    assert match.upstream_path == "/v1/models"
