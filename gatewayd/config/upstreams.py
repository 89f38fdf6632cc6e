"""Build the `upstreams` and `routes` sections: where traffic goes and how."""

from __future__ import annotations

from gatewayd.config import values as v
from gatewayd.config.access import read_limits
from gatewayd.config.reader import Many, Reader, Spec
from gatewayd.config.schema import (
    BreakerConfig,
    RetryConfig,
    RouteConfig,
    Secret,
    UpstreamConfig,
)
from gatewayd.config.source import Scalar
from gatewayd.headers import GATEWAY_SET, HOP_BY_HOP, REQUEST_ID

# Headers the gateway sets or strips itself, per request or per connection.
_OWNED = HOP_BY_HOP | GATEWAY_SET | {REQUEST_ID.lower()}


def _header_name(scalar: Scalar) -> str:
    """A header name an upstream's headers may set or its drop_headers drop."""
    name = scalar.text.strip()
    if not v.HEADER_NAME.fullmatch(name):
        raise ValueError(f"{v.shown(name)} is not a header name")
    if name.lower() == "authorization":
        raise ValueError("Authorization is the upstream's api_key (sent as Bearer)")
    if name.lower() in _OWNED:
        raise ValueError(f"{name} is handled by the gateway itself")
    return name


def _header_value(scalar: Scalar) -> Secret:
    """A header value: a secret (never shown), on one line."""
    value = v.secret(scalar)
    if any(char in value for char in "\r\n\0"):
        raise ValueError("a header value must be one line")
    return value


_UPSTREAM: Spec = {
    "api_key": v.secret,
    "connect_timeout": v.duration(positive=True),
    "read_timeout": v.duration(positive=True),
    "total_timeout": v.duration(positive=True),
    # 0 means no limit, as for aiohttp's TCPConnector.
    "pool_size": v.integer(0),
    "pool_size_per_host": v.integer(0),
    "keepalive": v.duration(),
    "dns_ttl": v.duration(),
    "drop_headers": Many(_header_name),
}
_RETRY: Spec = {
    "attempts": v.integer(1, 10),
    "backoff_base": v.duration(),
    "backoff_max": v.duration(),
    "retry_after_max": v.duration(),
    "on": Many(v.retry_condition),
    "budget_ratio": v.number(0.0, 1.0),
}
_BREAKER: Spec = {
    "failure_threshold": v.integer(1),
    "open_for": v.duration(positive=True),
    "half_open_max": v.integer(1),
}


def read_upstreams(root: Reader) -> dict[str, UpstreamConfig]:
    """Every well-formed upstream, by name; problems go to the reader's context."""
    result: dict[str, UpstreamConfig] = {}
    for name, reader in root.tables("upstreams"):
        urls = _urls(reader)
        fields = reader.fields(_UPSTREAM)
        retry = reader.table("retry")
        if retry is not None:
            fields["retry"] = read_retry(retry)
        breaker = reader.table("breaker")
        if breaker is not None:
            fields["breaker"] = read_breaker(breaker)
        headers = _headers(reader, fields.get("drop_headers", ()))
        if headers:
            fields["headers"] = headers
        if urls:
            result[name] = UpstreamConfig(name=name, urls=urls, **fields)
    return result


def _headers(reader: Reader, dropped: tuple[str, ...]) -> tuple[tuple[str, Secret], ...]:
    """The `headers` table as (name, value) pairs; a name is set once, and not
    also dropped by drop_headers."""
    taken = {name.lower() for name in dropped}

    def once(scalar: Scalar) -> str:
        name = _header_name(scalar)
        if name.lower() in taken:
            raise ValueError(f"{name} is set twice, or also listed in drop_headers")
        taken.add(name.lower())
        return name

    written = reader.mapping("headers", once, _header_value)
    return tuple(written.items()) if written else ()


def _urls(reader: Reader) -> tuple[str, ...] | None:
    one, many = reader.has("url"), reader.has("urls")
    if one and many:
        reader.problem("urls", "set url or urls, not both")
        return None
    if many:
        urls = reader.values("urls", v.http_url)
        if urls == ():
            reader.problem("urls", "needs at least one URL")
        return urls
    # Also taken when `url` is missing, so the problem says "url is required".
    url = reader.value("url", v.http_url, required=True)
    return (url,) if url is not None else None


def read_retry(reader: Reader) -> RetryConfig:
    """A `retry` table; backoff_max may not be below backoff_base."""
    retry = RetryConfig(**reader.fields(_RETRY))
    if retry.backoff_max < retry.backoff_base:
        # Blame the key that was written; the other one holds its default.
        if reader.has("backoff_max"):
            reader.problem("backoff_max", "must not be shorter than backoff_base")
        else:
            reader.problem(
                "backoff_base", f"must not be longer than backoff_max ({retry.backoff_max:g}s)"
            )
    return retry


def read_breaker(reader: Reader) -> BreakerConfig:
    """A `breaker` table (upstreams and the presidio filter both have one)."""
    return BreakerConfig(**reader.fields(_BREAKER))


def read_routes(root: Reader, upstreams: set[str], policies: set[str]) -> dict[str, RouteConfig]:
    """Every well-formed route; `upstreams` and `policies` are the declared names."""
    result: dict[str, RouteConfig] = {}
    owners: dict[str, str] = {}
    for name, reader in root.tables("routes"):
        prefix = reader.value("prefix", v.route_prefix, required=True)
        upstream = reader.value("upstream", v.one_of(upstreams, "upstream"), required=True)
        fields = reader.fields(
            {
                "policy": v.one_of(policies, "policy"),
                "strip_prefix": v.boolean,
                "fallback": v.one_of(upstreams, "upstream"),
            }
        )
        limits = reader.table("ratelimit")
        if limits is not None:
            fields["ratelimit"] = read_limits(limits)
        if upstream is not None and fields.get("fallback") == upstream:
            reader.problem("fallback", "must be another upstream than the route's own")
        if prefix is not None and prefix in owners:
            reader.problem("prefix", f"route {owners[prefix]} already has this prefix")
        elif prefix is not None:
            owners[prefix] = name
        if prefix is not None and upstream is not None:
            result[name] = RouteConfig(name=name, prefix=prefix, upstream=upstream, **fields)
    return result
