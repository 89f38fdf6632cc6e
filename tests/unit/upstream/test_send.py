"""Upstream.send's attempts and what the client sees, over the in-memory
transport: one table of faults and answers per target against retry configs.
The socket-level faults themselves are tests/integration/test_upstream_faults.py's."""

from __future__ import annotations

import dataclasses
import uuid
from collections import Counter
from collections.abc import Sequence

import pytest

from gatewayd.config.schema import BreakerConfig, RetryConfig, UpstreamConfig
from gatewayd.errors import UpstreamError
from gatewayd.upstream.client import Upstream
from gatewayd.upstream.outcome import CONNECT, RESET_BEFORE_REQUEST, SENT
from tests.fakes.transport import Answer, Fault, MockTransport, Request

FAST = RetryConfig(attempts=3, backoff_base=0.001)
# What a target does: a status with optional ", Name: value" headers, or one
# of these faults (stage, by a timeout).
_FAULTS = {
    "refused": (CONNECT, False),
    "connect-timeout": (CONNECT, True),
    "stale": (RESET_BEFORE_REQUEST, False),
    "reset": (SENT, False),
    "timeout": (SENT, True),
}


def _scripted(scripts: Sequence[Sequence[str]]) -> tuple[list[str], MockTransport]:
    """Hosts a, b, ... and a transport whose host's n-th request gets its
    script's n-th action (the last repeats)."""
    hosts = [chr(ord("a") + i) for i in range(len(scripts))]
    by_host = dict(zip(hosts, scripts, strict=True))
    seen: Counter[str] = Counter()

    def handler(request: Request) -> Answer:
        script = by_host[request.host]
        action = script[min(seen[request.host], len(script) - 1)]
        seen[request.host] += 1
        if action in _FAULTS:
            stage, timeout = _FAULTS[action]
            raise Fault(stage, timeout=timeout)
        status, *fields = action.split(", ")
        return Answer(int(status), dict(field.split(": ", 1) for field in fields))

    return hosts, MockTransport(handler)


async def _outcome(upstream: Upstream) -> tuple[int, int, str]:
    """(status, attempts, error message or "") of one POST, as the client sees it."""
    try:
        sent = await upstream.send("POST", "/v1/chat/completions", {}, b"{}")
    except UpstreamError as exc:
        return exc.status, exc.attempts, str(exc)
    sent.response.release()
    return sent.response.status, sent.attempts, ""


REFUSED = "unreachable"
MAY_HAVE_RUN = "may have been processed"
# id, each target's script, RetryConfig changes, status, attempts, message, requests per target
CASES = [
    ("refused", [["refused"]], {}, 502, 3, f"{REFUSED} (3 attempts)", [3]),
    ("refused-then-ok", [["refused", "200"]], {}, 200, 2, "", [2]),
    ("connect-timeout", [["connect-timeout"]], {}, 502, 3, REFUSED, [3]),
    ("stale-then-ok", [["stale", "200"]], {}, 200, 2, "", [2]),
    ("stale", [["stale"]], {}, 502, 3, "(connection closed before use)", [3]),
    ("reset-not-by-default", [["reset", "200"]], {}, 502, 1, MAY_HAVE_RUN, [1]),
    ("reset-opted-in", [["reset", "200"]], {"on": ("reset",)}, 200, 2, "", [2]),
    ("reset-opted-in-runs-out", [["reset"]], {"on": ("reset",)}, 502, 3, MAY_HAVE_RUN, [3]),
    ("opt-in-replaces-defaults", [["refused", "200"]], {"on": ("reset",)}, 502, 1, REFUSED, [1]),
    ("legacy-connect", [["stale", "200"]], {"on": ("connect",)}, 200, 2, "", [2]),
    ("timeout-not-by-default", [["timeout", "200"]], {}, 504, 1, "timed out after the", [1]),
    ("timeout-opted-in", [["timeout", "200"]], {"on": ("timeout",)}, 200, 2, "", [2]),
    ("503-then-ok", [["503", "200"]], {}, 200, 2, "", [2]),
    ("503-runs-out", [["503"]], {}, 503, 3, "", [3]),
    ("500-not-retried", [["500", "200"]], {}, 500, 1, "", [1]),
    ("5xx-opted-in", [["500", "200"]], {"on": ("5xx",)}, 200, 2, "", [2]),
    ("x-should-retry-true", [["500, x-should-retry: true", "200"]], {}, 200, 2, "", [2]),
    ("x-should-retry-false", [["503, x-should-retry: false", "200"]], {}, 503, 1, "", [1]),
    ("429-short-retry-after", [["429, Retry-After: 0.001", "200"]], {}, 200, 2, "", [2]),
    ("429-retry-after-ms", [["429, retry-after-ms: 1", "200"]], {}, 200, 2, "", [2]),
    ("429-past-retry-after-max", [["429, Retry-After: 60", "200"]], {}, 429, 1, "", [1]),
    (
        "429-past-a-lower-retry-after-max",
        [["429, Retry-After: 0.01", "200"]],
        {"retry_after_max": 0.005},
        429,
        1,
        "",
        [1],
    ),
    ("one-attempt", [["503", "200"]], {"attempts": 1}, 503, 1, "", [1]),
    ("429-moves-to-the-next-target", [["429, Retry-After: 60"], ["200"]], {}, 200, 2, "", [1, 1]),
    ("each-target-once", [["refused"], ["refused"], ["refused"]], {}, 502, 3, REFUSED, [1, 1, 1]),
    ("reset-stays-on-one", [["reset"], ["200"]], {}, 502, 1, MAY_HAVE_RUN, [1, 0]),
    ("back-to-the-first", [["503"], ["503"]], {}, 503, 3, "", [2, 1]),
]


@pytest.mark.parametrize(
    ("scripts", "retry", "status", "attempts", "message", "requests"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
async def test_attempts_and_what_the_client_sees(
    scripts: list[list[str]],
    retry: dict[str, object],
    status: int,
    attempts: int,
    message: str,
    requests: list[int],
) -> None:
    """Each script under each retry config takes the exact attempts on each
    target and ends in the exact status and error message."""
    hosts, transport = _scripted(scripts)
    config = UpstreamConfig(
        name=f"u-{uuid.uuid4().hex[:8]}",
        urls=tuple(f"http://{host}" for host in hosts),
        retry=dataclasses.replace(FAST, **retry),  # type: ignore[arg-type]
    )
    upstream = Upstream(config, transport=transport)
    await upstream.start()
    got_status, got_attempts, got_message = await _outcome(upstream)
    assert (got_status, got_attempts) == (status, attempts)
    # A response carries no message; an error's names what happened.
    assert bool(got_message) == bool(message)
    assert message in got_message
    sent = Counter(r.host for r in transport.requests)
    assert [sent[host] for host in hosts] == requests


async def test_moving_off_a_refusing_target_is_not_charged_to_the_budget() -> None:
    """A connection refused delivered nothing: trying an untried target next
    costs no server more than its share, so it does not spend the retry budget
    (whose floor of 3 a dead target of three would otherwise exhaust)."""
    hosts, transport = _scripted([["refused"], ["200"], ["200"]])
    config = UpstreamConfig(
        name=f"u-{uuid.uuid4().hex[:8]}",
        urls=tuple(f"http://{host}" for host in hosts),
        retry=FAST,
    )
    upstream = Upstream(config, transport=transport)
    await upstream.start()
    outcomes = [await _outcome(upstream) for _ in range(30)]
    assert {status for status, _, _ in outcomes} == {200}
    # Tried until its breaker opened, each time followed by a healthy target.
    assert Counter(r.host for r in transport.requests)["a"] == config.breaker.failure_threshold
    assert upstream.status()["window_retries"] == 0


async def test_a_retry_on_the_same_target_spends_the_budget() -> None:
    """Retrying where the request already failed is what the budget bounds."""
    _, transport = _scripted([["503"]])
    config = UpstreamConfig(
        name=f"u-{uuid.uuid4().hex[:8]}",
        urls=("http://a",),
        retry=FAST,
        breaker=BreakerConfig(failure_threshold=100),
    )
    upstream = Upstream(config, transport=transport)
    await upstream.start()
    outcomes = [await _outcome(upstream) for _ in range(4)]
    # The floor's three retries, then none.
    assert [attempts for _, attempts, _ in outcomes] == [3, 2, 1, 1]
