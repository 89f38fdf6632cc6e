"""The request head the transport writes: the path under the target's base
path, Host from the target, lengths from the body, nothing smuggled."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gatewayd.upstream.transport import PooledTransport, _request_head


@pytest.fixture
async def transport() -> AsyncIterator[PooledTransport]:
    """A transport that never connects; only its origins are used."""
    made = PooledTransport(limit=1)
    yield made
    await made.close()


@pytest.mark.parametrize(
    ("base", "path_qs", "line", "host"),
    [
        (
            "https://api.openai.com/v1",
            "/chat/completions",
            "/v1/chat/completions",
            "api.openai.com",
        ),
        (
            "https://api.openai.com/v1/",
            "/chat/completions",
            "/v1/chat/completions",
            "api.openai.com",
        ),
        ("http://127.0.0.1:8000", "/v1/models?limit=2", "/v1/models?limit=2", "127.0.0.1:8000"),
        ("http://127.0.0.1:8000/", "/", "/", "127.0.0.1:8000"),
        ("http://[::1]:8000/base", "/models", "/base/models", "[::1]:8000"),
    ],
)
async def test_path_lands_under_the_base_path_with_one_slash(
    transport: PooledTransport, base: str, path_qs: str, line: str, host: str
) -> None:
    """The request path follows the target's path with exactly one slash between."""
    head = _request_head(transport.origin(base), "GET", path_qs, [], b"")
    assert head == f"GET {line} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


async def test_encoded_path_and_query_go_out_unchanged(transport: PooledTransport) -> None:
    """Percent-escapes from the client are neither decoded nor quoted twice."""
    head = _request_head(transport.origin("http://h/v1"), "GET", "/f/a%2Fb?q=x%20y&e=%3D", [], b"")
    assert head.startswith(b"GET /v1/f/a%2Fb?q=x%20y&e=%3D HTTP/1.1\r\n")


async def test_length_follows_the_body_and_post_always_has_one(transport: PooledTransport) -> None:
    """A body gets its length; an empty POST says 0; an empty GET or DELETE says nothing."""
    origin = transport.origin("http://h")
    assert b"Content-Length: 7\r\n" in _request_head(origin, "POST", "/", [], b'{"a":1}')
    assert b"Content-Length: 0\r\n" in _request_head(origin, "POST", "/", [], b"")
    for method in ("GET", "DELETE"):
        assert b"Content-Length" not in _request_head(origin, method, "/", [], b"")


async def test_headers_keep_their_order_and_bytes(transport: PooledTransport) -> None:
    """Headers go out in the order given; non-ASCII bytes the server decoded round-trip."""
    origin = transport.origin("http://h")
    fields = [("X-B", "2"), ("X-A", "caf\udcc3\udca9")]
    head = _request_head(origin, "GET", "/", fields, b"")
    assert head.endswith(b"X-B: 2\r\nX-A: caf\xc3\xa9\r\n\r\n")


@pytest.mark.parametrize(
    "fields",
    [[("X-A", "v\r\nX-Injected: 1")], [("X-A", "v\n")], [("X-A\r", "v")], [("X-A", "v\x00")]],
)
async def test_cr_lf_or_nul_in_a_header_is_refused(
    transport: PooledTransport, fields: list[tuple[str, str]]
) -> None:
    """A CR, LF or NUL in a name or value would smuggle a header: refused."""
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        _request_head(transport.origin("http://h"), "GET", "/", fields, b"")


@pytest.mark.parametrize("path_qs", ["/a b", "/a\r\nX: 1", "relative"])
async def test_unsafe_request_target_is_refused(transport: PooledTransport, path_qs: str) -> None:
    """A space or control in the path, or a path not starting with /, never goes out."""
    with pytest.raises(ValueError, match="request target"):
        _request_head(transport.origin("http://h"), "GET", path_qs, [], b"")


async def test_url_credentials_never_reach_the_host_header(transport: PooledTransport) -> None:
    """user:password in a target URL (the config refuses them) is not sent as part of Host."""
    origin = transport.origin("https://user:pw@example.test/v1")
    head = _request_head(origin, "GET", "/models", [], b"")
    assert head == b"GET /v1/models HTTP/1.1\r\nHost: example.test\r\n\r\n"
    assert "pw" not in repr(origin)
