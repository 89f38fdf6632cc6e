"""What clients read from the limiter: OpenAI's reset format and the limits that apply."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from gatewayd.config.schema import ClientConfig, Config, Limits, RateLimitConfig, RouteConfig
from gatewayd.identity import Identity
from gatewayd.ratelimit.limiter import Budgets, duration


@pytest.mark.parametrize(
    ("seconds", "written"),
    [(0.0, "0ms"), (0.25, "250ms"), (1.0, "1s"), (1.5, "1.5s"), (59.9999, "60s"), (360.0, "6m0s")],
)
def test_resets_are_written_as_openai_writes_them(seconds: float, written: str) -> None:
    """x-ratelimit-reset-* reads like OpenAI's: 250ms, 1.5s, 6m0s."""
    assert duration(seconds) == written


def _identity(client: ClientConfig | None = None) -> Identity:
    name = f"client:{client.name}" if client else "ip:192.0.2.1"
    return Identity(name, client, name, client is not None)


def test_limits_resolve_client_over_route_over_defaults() -> None:
    """Each level sets what it names; 0 turns a limit off; no limit at all is no plan."""
    config = Config(
        source=Path("x.yaml"),
        ratelimit=RateLimitConfig(limits=Limits(requests_per_minute=60, tokens_per_minute=1000)),
    )
    budgets = Budgets(config)
    plain = RouteConfig(name="a", prefix="/a", upstream="u")
    own = RouteConfig(name="b", prefix="/b", upstream="u", ratelimit=Limits(tokens_per_minute=0))
    client = ClientConfig(
        name="app", key_sha256=hashlib.sha256(b"k").hexdigest(), limits=Limits(burst=9)
    )
    shared = budgets.plan(plain, _identity())
    assert shared is not None
    assert shared.scope == "*"
    assert (shared.requests.capacity if shared.requests else None) == 6
    assert shared.tokens is not None
    routed = budgets.plan(own, _identity(client))
    assert routed is not None
    assert routed.scope == "b"
    assert routed.tokens is None
    assert (routed.requests.capacity if routed.requests else None) == 9
    nothing = Budgets(Config(source=Path("x.yaml")))
    assert nothing.plan(plain, _identity()) is None
