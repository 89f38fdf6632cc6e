"""Which headers cross the proxy."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from gatewayd.headers import client_response_headers, request_id_from, upstream_request_headers


def _h(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def test_request_drops_hop_by_hop_auth_and_host() -> None:
    """Hop-by-hop headers, those Connection names, Host and the client's key never go upstream."""
    out = upstream_request_headers(
        _h(
            ("Host", "gateway.local"),
            ("Authorization", "Bearer client-key"),
            ("Connection", "keep-alive, X-Secret-Hop"),
            ("X-Secret-Hop", "1"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Trailer", "X"),
            ("Transfer-Encoding", "chunked"),
            ("Upgrade", "websocket"),
            ("Proxy-Authorization", "Basic x"),
            ("Content-Length", "10"),
            ("Content-Type", "application/json"),
            ("OpenAI-Organization", "org-1"),
        ),
        "rid-1",
    )
    assert dict(out) == {
        "Content-Type": "application/json",
        "OpenAI-Organization": "org-1",
        "X-Request-Id": "rid-1",
    }


def test_response_drops_hop_by_hop() -> None:
    """The upstream's hop-by-hop headers and Content-Length (we recompute it) are not relayed."""
    out = client_response_headers(
        _h(
            ("Connection", "close"),
            ("Transfer-Encoding", "chunked"),
            ("Proxy-Authenticate", "Basic"),
            ("Content-Length", "3"),
            ("Content-Type", "application/json"),
            ("x-ratelimit-remaining-requests", "99"),
        )
    )
    assert dict(out) == {
        "Content-Type": "application/json",
        "x-ratelimit-remaining-requests": "99",
    }


def test_request_id_kept_when_sane() -> None:
    """A short, plain client request id is kept; anything odd is replaced."""
    assert request_id_from(_h(("X-Request-Id", "abc-123.x:y_z"))) == "abc-123.x:y_z"
    replaced = request_id_from(_h(("X-Request-Id", "bad id\r\nX-Evil: 1")))
    assert replaced != "bad id\r\nX-Evil: 1"
    assert len(replaced) == 32
    assert len(request_id_from(_h(("X-Request-Id", "a" * 200)))) == 32
    assert len(request_id_from(_h())) == 32
