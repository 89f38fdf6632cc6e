"""The upstreams and routes sections."""

from __future__ import annotations

import pytest

from gatewayd.config import load
from gatewayd.config.schema import BreakerConfig, RetryConfig, RouteConfig, Secret, UpstreamConfig

from .conftest import Problems, Write


def test_upstream_yaml(write: Write) -> None:
    """Every upstream key, retry and breaker included, converts to its typed value."""
    path = write(
        "gw.yaml",
        """
        upstreams:
          main:
            urls: [http://10.0.0.1:8000/, "https://llm.internal/base"]
            api_key: ${KEY}
            connect_timeout: 1s
            read_timeout: 1m
            total_timeout: 1h
            pool_size: 0
            pool_size_per_host: 8
            keepalive: 0
            dns_ttl: 10
            retry:
              attempts: 5
              backoff_base: 50ms
              backoff_max: 1s
              on: [connect, timeout, 5xx, 429]
              budget_ratio: 1
            breaker:
              failure_threshold: 3
              open_for: 10s
              half_open_max: 2
        """,
    )
    assert load(path, {"KEY": "sk-abc"}).upstreams["main"] == UpstreamConfig(
        name="main",
        urls=("http://10.0.0.1:8000", "https://llm.internal/base"),
        api_key=Secret("sk-abc"),
        connect_timeout=1.0,
        read_timeout=60.0,
        total_timeout=3600.0,
        pool_size=0,
        pool_size_per_host=8,
        keepalive=0.0,
        dns_ttl=10.0,
        retry=RetryConfig(
            attempts=5,
            backoff_base=0.05,
            backoff_max=1.0,
            on=("connect", "timeout", "5xx", "429"),
            budget_ratio=1.0,
        ),
        breaker=BreakerConfig(failure_threshold=3, open_for=10.0, half_open_max=2),
    )


def test_upstream_ini_lists(write: Write) -> None:
    """INI's comma-separated urls and retry.on are the same lists as YAML's."""
    path = write(
        "gw.ini",
        """
        [upstreams.main]
        urls = http://a:1, http://b:2
        [upstreams.main.retry]
        on = connect, 502
        budget_ratio = 0.5
        """,
    )
    upstream = load(path, {}).upstreams["main"]
    assert upstream.urls == ("http://a:1", "http://b:2")
    assert upstream.retry.on == ("connect", "502")
    assert upstream.retry.budget_ratio == 0.5


def test_api_key_is_secret_and_empty_means_none(write: Write) -> None:
    """api_key becomes a Secret that hides itself; an empty interpolation means no key."""
    path = write(
        "gw.yaml", "upstreams:\n  u:\n    url: http://h\n    api_key: ${OPENAI_API_KEY:-}\n"
    )
    assert load(path, {}).upstreams["u"].api_key is None
    key = load(path, {"OPENAI_API_KEY": "sk-live-xyz"}).upstreams["u"].api_key
    assert key == "sk-live-xyz"
    assert isinstance(key, Secret)
    assert "sk-live" not in repr(load(path, {"OPENAI_API_KEY": "sk-live-xyz"}))


def test_api_key_never_echoed(write: Write, problems: Problems) -> None:
    """A misplaced or mistyped key does not appear in any problem."""
    path = write(
        "gw.yaml",
        """
        upstreams:
          u:
            url: http://h
            api_key: [sk-live-aaaa]
            api_kye: sk-live-bbbb
            urls: sk-live-cccc
        """,
    )
    found = [str(p) for p in problems(path)]
    assert found == [
        f"{path}:4: upstreams.u.api_key: expected a single value, got a list",
        f"{path}:5: upstreams.u.api_kye: unknown key; did you mean api_key?",
        f"{path}:6: upstreams.u.urls: set url or urls, not both",
    ]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://h", "must be a URL starting with http:// or https://"),
        ("h:80", "must be a URL starting with http:// or https://"),
        ("http://", "the URL needs a valid host"),
        ("http://bad_host!", "the URL needs a valid host"),
        ("http://h:99999", "the URL's port is not a number between 1 and 65535"),
        ("http://user:sk-live-pw@h", "credentials do not belong in the URL; use api_key"),
        ("http://h/?a=1", "the URL must not have a query or fragment"),
        ("http://h/#x", "the URL must not have a query or fragment"),
    ],
)
def test_bad_urls(write: Write, problems: Problems, url: str, message: str) -> None:
    """Bad upstream URLs are problems that do not repeat the URL."""
    path = write("gw.yaml", f"upstreams:\n  u:\n    url: '{url}'\n")
    (problem,) = problems(path)
    assert (problem.line, problem.key, problem.message) == (3, "upstreams.u.url", message)
    assert url not in str(problem)


def test_url_or_urls(write: Write, problems: Problems) -> None:
    """An upstream needs exactly one of url and urls, and urls may not be empty."""
    path = write(
        "gw.yaml",
        """
        upstreams:
          neither:
            pool_size: 1
          empty:
            urls: []
          unset:
            url: ${UPSTREAM_URL:-}
        """,
    )
    assert [str(p) for p in problems(path)] == [
        f"{path}:2: upstreams.neither.url: is required",
        f"{path}:5: upstreams.empty.urls: needs at least one URL",
        f"{path}:7: upstreams.unset.url: is required",
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("attempts: 11", "retry.attempts: must be between 1 and 10"),
        ("budget_ratio: 1.5", "retry.budget_ratio: must be between 0 and 1"),
        ("budget_ratio: -0.1", "retry.budget_ratio: must be between 0 and 1"),
        ("on: [connect, 6xx]", "retry.on: expected connect-failure, reset-before-request"),
        ("on: [connect, 99]", "retry.on: expected connect-failure, reset-before-request"),
        ("backoff_max: 10ms", "retry.backoff_max: must not be shorter than backoff_base"),
        ("backoff_base: 5s", "retry.backoff_base: must not be longer than backoff_max (2s)"),
    ],
)
def test_retry_problems(write: Write, problems: Problems, line: str, message: str) -> None:
    """Retry values outside their range are problems on their own key."""
    path = write("gw.yaml", f"upstreams:\n  u:\n    url: http://h\n    retry:\n      {line}\n")
    (problem,) = problems(path)
    assert problem.line == 5
    assert str(problem).startswith(f"{path}:5: upstreams.u.{message}")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("failure_threshold: 0", "breaker.failure_threshold: must be at least 1"),
        ("open_for: 0", "breaker.open_for: must be longer than 0s"),
        ("half_open_max: 0", "breaker.half_open_max: must be at least 1"),
        ("open_fr: 1s", "breaker.open_fr: unknown key; did you mean open_for?"),
    ],
)
def test_breaker_problems(write: Write, problems: Problems, line: str, message: str) -> None:
    """Breaker values outside their range, and unknown breaker keys, are problems."""
    path = write("gw.yaml", f"upstreams:\n  u:\n    url: http://h\n    breaker:\n      {line}\n")
    assert [str(p) for p in problems(path)] == [f"{path}:5: upstreams.u.{message}"]


def test_upstream_headers_yaml_and_ini(write: Write) -> None:
    """headers (values from the environment, as secrets) and drop_headers read alike from both."""
    yaml = write(
        "gw.yaml",
        """
        upstreams:
          azure:
            url: http://h
            headers:
              api-key: ${AZURE_KEY}
              X-Tenant: gatewayd
            drop_headers: [X-Debug, x-client-hint]
        """,
    )
    ini = write(
        "gw.ini",
        """
        [upstreams.azure]
        url = http://h
        drop_headers = X-Debug, x-client-hint
        [upstreams.azure.headers]
        api-key = ${AZURE_KEY}
        X-Tenant = gatewayd
        """,
    )
    env = {"AZURE_KEY": "azure-live-key"}
    upstream = load(yaml, env).upstreams["azure"]
    assert upstream == load(ini, env).upstreams["azure"]
    assert upstream.headers == (("api-key", "azure-live-key"), ("X-Tenant", "gatewayd"))
    assert all(isinstance(value, Secret) for _, value in upstream.headers)
    assert upstream.drop_headers == ("X-Debug", "x-client-hint")
    assert "azure-live-key" not in repr(upstream)


@pytest.mark.parametrize(
    ("lines", "line", "key", "message"),
    [
        (
            "headers:\n      'bad name': x",
            5,
            "headers.bad name",
            "'bad name' is not a header name",
        ),
        (
            "headers:\n      Authorization: Bearer sk-live-x",
            5,
            "headers.Authorization",
            "Authorization is the upstream's api_key (sent as Bearer)",
        ),
        ("headers:\n      Host: other", 5, "headers.Host", "Host is handled by the gateway itself"),
        (
            "drop_headers: [X-Request-Id]",
            4,
            "drop_headers",
            "X-Request-Id is handled by the gateway itself",
        ),
        (
            "headers:\n      X-Tenant: a\n      x-tenant: b",
            6,
            "headers.x-tenant",
            "x-tenant is set twice, or also listed in drop_headers",
        ),
        (
            "drop_headers: [api-key]\n    headers:\n      API-Key: sk-live-x",
            6,
            "headers.API-Key",
            "API-Key is set twice, or also listed in drop_headers",
        ),
        (
            'headers:\n      X-Tenant: "sk-live-a\\nX-Evil: 1"',
            5,
            "headers.X-Tenant",
            "a header value must be one line",
        ),
        ("headers:\n      X-Tenant: ${UNSET_VAR:-}", 5, "headers.X-Tenant", "is required"),
        ("headers: [a]", 4, "headers", "expected a table, got a list"),
    ],
)
def test_upstream_header_problems(
    write: Write, problems: Problems, lines: str, line: int, key: str, message: str
) -> None:
    """Bad upstream header names and values are problems on their line, never showing a value."""
    path = write("gw.yaml", f"upstreams:\n  u:\n    url: http://h\n    {lines}\n")
    (problem,) = problems(path)
    assert (problem.line, problem.key, problem.message) == (line, f"upstreams.u.{key}", message)
    assert "sk-live" not in str(problem)


@pytest.mark.parametrize("name", ["open ai", "-x", "a.b"])
def test_bad_names(write: Write, problems: Problems, name: str) -> None:
    """Names used in metrics and INI sections are words without dots or spaces."""
    path = write("gw.yaml", f"upstreams:\n  '{name}':\n    url: http://h\n")
    (problem,) = problems(path)
    assert (problem.line, problem.key) == (2, f"upstreams.{name}")
    assert problem.message.startswith("a name is letters, digits, _ and -")


def test_routes(write: Write) -> None:
    """A route converts with its prefix, upstream, policy and strip_prefix."""
    path = write(
        "gw.yaml",
        """
        upstreams:
          up:
            url: http://h
        policies:
          strict: {}
        routes:
          chat:
            prefix: /v1/
            upstream: up
            policy: strict
            strip_prefix: true
          raw:
            prefix: /raw
            upstream: up
        """,
    )
    routes = load(path, {}).routes
    assert routes["chat"] == RouteConfig("chat", "/v1/", "up", "strict", True)
    assert routes["raw"] == RouteConfig("raw", "/raw", "up", None, False)


def test_route_fallback(write: Write, problems: Problems) -> None:
    """fallback names another declared upstream; the route's own or an unknown one is a problem."""
    path = write(
        "gw.yaml",
        """
        upstreams:
          up:
            url: http://h
          spare:
            url: http://s
        routes:
          a:
            prefix: /a
            upstream: up
            fallback: spare
          b:
            prefix: /b
            upstream: up
            fallback: up
          c:
            prefix: /c
            upstream: up
            fallback: nowhere
        """,
    )
    assert [str(p) for p in problems(path)] == [
        f"{path}:14: routes.b.fallback: must be another upstream than the route's own",
        f"{path}:18: routes.c.fallback: no upstream named 'nowhere' is declared",
    ]
    good = write(
        "ok.yaml",
        "upstreams:\n  up: {url: http://h}\n  spare: {url: http://s}\n"
        "routes:\n  a: {prefix: /a, upstream: up, fallback: spare}\n",
    )
    assert load(good, {}).routes["a"].fallback == "spare"


def test_route_problems(write: Write, problems: Problems) -> None:
    """Prefixes, references and duplicates are checked; a broken upstream is reported once."""
    path = write(
        "gw.yaml",
        """
        upstreams:
          up:
            url: http://h
          broken:
            url: ftp://h
        routes:
          a:
            prefix: v1
            upstream: up
          b:
            upstream: nowhere
            policy: lax
          c:
            prefix: /x
            upstream: broken
          d:
            prefix: /x
            upstream: up
            strip_prefix: sometimes
        """,
    )
    assert [str(p) for p in problems(path)] == [
        f"{path}:5: upstreams.broken.url: must be a URL starting with http:// or https://",
        f"{path}:8: routes.a.prefix: a prefix is a path starting with / such as /v1/; got 'v1'",
        f"{path}:10: routes.b.prefix: is required",
        f"{path}:11: routes.b.upstream: no upstream named 'nowhere' is declared",
        f"{path}:12: routes.b.policy: no policy named 'lax' is declared",
        f"{path}:17: routes.d.prefix: route c already has this prefix",
        f"{path}:19: routes.d.strip_prefix: expected true or false, got 'sometimes'",
    ]
