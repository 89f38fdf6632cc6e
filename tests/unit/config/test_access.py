"""The clients, auth and ratelimit sections, and routes' own limits, in YAML and INI."""

from __future__ import annotations

import hashlib

import pytest

from gatewayd.config import load
from gatewayd.config.schema import ClientConfig, Limits, RateLimitConfig, Secret

from .conftest import Problems, Write

DIGEST = hashlib.sha256(b"sk-app").hexdigest()
BASE = """
upstreams:
  up: {url: "http://127.0.0.1:9"}
routes:
  v1:
    prefix: /v1
    upstream: up
"""


def test_every_key_yaml(write: Write) -> None:
    """DESIGN's clients, auth and ratelimit keys, and a route's ratelimit, all load."""
    path = write(
        "gw.yaml",
        BASE
        + f"""
    ratelimit: {{requests_per_minute: 30, burst: 2}}
clients:
  app:
    key_sha256: {DIGEST.upper()}
    requests_per_minute: 600
    tokens_per_minute: 100000
    max_concurrent: 4
    models: [gpt-4o-mini, "text-embedding-*"]
auth:
  require_client_key: true
ratelimit:
  backend: redis
  redis_url: redis://127.0.0.1:6379/2
  key: header:X-Tenant
  requests_per_minute: 60
  burst: 5
  tokens_per_minute: 20000
  max_concurrent: 10
  on_backend_error: deny
  shadow: true
""",
    )
    config = load(path, {})
    assert config.clients["app"] == ClientConfig(
        name="app",
        key_sha256=DIGEST,
        limits=Limits(requests_per_minute=600, tokens_per_minute=100000, max_concurrent=4),
        models=("gpt-4o-mini", "text-embedding-*"),
    )
    assert config.auth.require_client_key
    assert config.ratelimit == RateLimitConfig(
        backend="redis",
        redis_url=Secret("redis://127.0.0.1:6379/2"),
        key="header:x-tenant",
        limits=Limits(60, 5, 20000, 10),
        on_backend_error="deny",
        shadow=True,
    )
    assert config.routes["v1"].ratelimit == Limits(requests_per_minute=30, burst=2)


def test_the_same_tree_in_ini(write: Write) -> None:
    """INI sections [clients.NAME], [auth], [ratelimit], [routes.NAME.ratelimit] mean the same."""
    path = write(
        "gw.ini",
        f"""
        [upstreams.up]
        url = http://127.0.0.1:9
        [routes.v1]
        prefix = /v1
        upstream = up
        [routes.v1.ratelimit]
        requests_per_minute = 30
        [clients.app]
        key_sha256 = {DIGEST}
        models = gpt-4o-mini, gpt-4.1*
        [auth]
        require_client_key = yes
        [ratelimit]
        key = api_key
        requests_per_minute = 60
        """,
    )
    config = load(path, {})
    assert config.clients["app"].models == ("gpt-4o-mini", "gpt-4.1*")
    assert config.auth.require_client_key
    assert config.ratelimit.key == "api_key"
    assert config.ratelimit.limits.requests_per_minute == 60
    assert config.routes["v1"].ratelimit == Limits(requests_per_minute=30)


@pytest.mark.parametrize(
    ("text", "line", "key", "message"),
    [
        ("clients:\n  app:\n    key_sha256: abc\n", 3, "clients.app.key_sha256", "64 hex digits"),
        (
            "clients:\n  app:\n    requests_per_minute: 5\n",
            2,
            "clients.app.key_sha256",
            "is required (or tls_subject)",
        ),
        (
            f"clients:\n  app:\n    key_sha256: {DIGEST}\n    models: ['gpt*4']\n",
            4,
            "clients.app.models",
            "not a model name or a prefix ending in *",
        ),
        (
            f"clients:\n  app:\n    key_sha256: {DIGEST}\n    models: []\n",
            4,
            "clients.app.models",
            "allows no model",
        ),
        (
            f"clients:\n  a:\n    key_sha256: {DIGEST}\n  b:\n    key_sha256: {DIGEST}\n",
            5,
            "clients.b.key_sha256",
            "client a has the same key",
        ),
        ("ratelimit:\n  key: cookie\n", 2, "ratelimit.key", "ip, tls_subject or header:NAME"),
        (
            "clients:\n  a:\n    tls_subject: CN=x\n  b:\n    tls_subject: CN=x\n",
            5,
            "clients.b.tls_subject",
            "client a has the same certificate subject",
        ),
        ("clients:\n  a:\n    tls_subject: billing\n", 3, "clients.a.tls_subject", "CN=billing"),
        ("ratelimit:\n  backend: redis\n", 1, "ratelimit.redis_url", "with backend: redis"),
        ("ratelimit:\n  burst: 0\n", 2, "ratelimit.burst", "must be at least 1"),
        (
            "ratelimit:\n  requests_per_minute: 0\n  burst: 3\n",
            3,
            "ratelimit.burst",
            "nothing to burst",
        ),
        ("ratelimit:\n  shadow: maybe\n", 2, "ratelimit.shadow", "expected true or false"),
        ("auth:\n  require_client_key: 2\n", 2, "auth.require_client_key", "true or false"),
        ("auth:\n  require_key: true\n", 2, "auth.require_key", "did you mean require_client_key"),
    ],
)
def test_problems_name_file_line_and_key(
    write: Write, problems: Problems, text: str, line: int, key: str, message: str
) -> None:
    """Bad client, auth and limit values are problems with their line and dotted key."""
    path = write("gw.yaml", text)
    found = problems(path)
    assert any(
        (p.line, p.key) == (line, key) and message in p.message and p.path == path for p in found
    ), found


def test_a_route_limit_naming_no_route_is_a_problem(write: Write, problems: Problems) -> None:
    """A ratelimit under a route name that is no whole route says what the route lacks."""
    path = write("gw.yaml", BASE + "  ghost:\n    ratelimit: {requests_per_minute: 5}\n")
    found = problems(path)
    assert [(p.key, p.message) for p in found] == [
        ("routes.ghost.prefix", "is required"),
        ("routes.ghost.upstream", "is required"),
    ]


def test_redis_url_never_shows_its_password(write: Write) -> None:
    """The Redis URL is a secret: its repr hides the password."""
    path = write(
        "gw.yaml", "ratelimit:\n  backend: redis\n  redis_url: redis://:hunter2@127.0.0.1:6379/0\n"
    )
    assert "hunter2" not in repr(load(path, {}).ratelimit)
