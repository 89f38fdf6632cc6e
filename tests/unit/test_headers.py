"""Which headers cross the proxy."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from gatewayd.config.schema import Secret, UpstreamConfig
from gatewayd.headers import client_response_headers, request_id_from, upstream_request_headers

PLAIN = UpstreamConfig(name="u", urls=("http://u",))


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
        ),
        "rid-1",
        PLAIN,
    )
    assert dict(out) == {"Content-Type": "application/json", "X-Request-Id": "rid-1"}


def test_request_drops_client_credentials_and_billing_selectors() -> None:
    """Other APIs' keys, cookies and the org or project to bill never go upstream."""
    sent = [
        ("api-key", "k1"),
        ("X-API-Key", "k2"),
        ("x-goog-api-key", "k3"),
        ("Ocp-Apim-Subscription-Key", "k4"),
        ("OpenAI-Organization", "org-1"),
        ("openai-project", "proj-1"),
        ("X-Goog-User-Project", "gcp-1"),
        ("Cookie", "a=b"),
        ("OpenAI-Beta", "assistants=v2"),
    ]
    out = upstream_request_headers(_h(*sent), "rid-1", PLAIN)
    assert dict(out) == {"OpenAI-Beta": "assistants=v2", "X-Request-Id": "rid-1"}


def test_request_applies_the_upstreams_headers_and_drop_headers() -> None:
    """An upstream's headers replace every client value of theirs; its drop_headers go."""
    upstream = UpstreamConfig(
        name="azure",
        urls=("http://u",),
        headers=(("api-key", Secret("azure-key")), ("X-Tenant", Secret("t1"))),
        drop_headers=("X-Debug",),
    )
    sent = _h(("API-Key", "client"), ("x-tenant", "a"), ("X-Tenant", "b"), ("x-debug", "1"))
    out = upstream_request_headers(sent, "rid-1", upstream)
    assert sorted(out.items()) == [
        ("X-Request-Id", "rid-1"),
        ("X-Tenant", "t1"),
        ("api-key", "azure-key"),
    ]


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
        ),
        PLAIN,
    )
    assert dict(out) == {
        "Content-Type": "application/json",
        "x-ratelimit-remaining-requests": "99",
    }


def test_response_drops_cookies_and_the_upstreams_credentials() -> None:
    """Set-Cookie, echoed keys, the billed org and the upstream's configured headers stay here."""
    upstream = UpstreamConfig(name="u", urls=("http://u",), headers=(("X-Tenant", Secret("t")),))
    out = client_response_headers(
        _h(
            ("Set-Cookie", "__cf_bm=1"),
            ("Authorization", "Bearer sk-upstream"),
            ("api-key", "azure-key"),
            ("openai-organization", "org-gateway"),
            ("OpenAI-Project", "proj-gateway"),
            ("x-tenant", "t"),
            ("openai-processing-ms", "12"),
        ),
        upstream,
    )
    assert dict(out) == {"openai-processing-ms": "12"}


def test_request_id_kept_when_sane() -> None:
    """A short, plain client request id is kept; anything odd is replaced."""
    assert request_id_from(_h(("X-Request-Id", "abc-123.x:y_z"))) == "abc-123.x:y_z"
    replaced = request_id_from(_h(("X-Request-Id", "bad id\r\nX-Evil: 1")))
    assert replaced != "bad id\r\nX-Evil: 1"
    assert len(replaced) == 32
    assert len(request_id_from(_h(("X-Request-Id", "a" * 200)))) == 32
    assert len(request_id_from(_h())) == 32
