"""How the Presidio filter fails: bounded in time, with a fixed kind, never leaking text."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

import pytest

from gatewayd.config.schema import BreakerConfig
from gatewayd.errors import FilterError
from tests.fakes.presidio_server import Analyzer, StartFilter

SECRET_TEXT = "mail jane.roe@example.com, iban GB82 WEST 1234 5698 7654 32"


async def failure(call: Awaitable[object]) -> FilterError:
    """The FilterError `call` raises, checked to carry none of the text."""
    with pytest.raises(FilterError) as caught:
        await call
    assert "jane.roe" not in str(caught.value)
    return caught.value


async def test_stalled_analyzer_times_out_on_time(
    start_filter: StartFilter, analyzer: Analyzer
) -> None:
    """An analyzer that does not answer fails the call with kind timeout within timeout+50 ms."""
    presidio = await start_filter(timeout=0.2)
    analyzer.state.stall = 2.0
    started = time.perf_counter()
    error = await failure(presidio.scan_batch([SECRET_TEXT]))
    elapsed = time.perf_counter() - started
    assert (error.filter_name, error.kind) == ("presidio", "timeout")
    assert 0.2 <= elapsed < 0.25


async def test_stopped_analyzer_is_a_connect_error(
    start_filter: StartFilter, analyzer: Analyzer
) -> None:
    """Connection refused is kind connect; the message names host and port, not credentials."""
    presidio = await start_filter(url=analyzer.url.replace("://", "://user:hunter2@"))
    await analyzer.server.close()
    error = await failure(presidio.scan_batch([SECRET_TEXT]))
    assert error.kind == "connect"
    assert analyzer.url.removeprefix("http://") in str(error)
    assert "hunter2" not in str(error)


async def test_error_status_is_an_http_error(start_filter: StartFilter, analyzer: Analyzer) -> None:
    """A 500 from the analyzer is kind http; its body is not repeated."""
    presidio = await start_filter()
    analyzer.state.fail_status = 500
    error = await failure(presidio.scan_batch([SECRET_TEXT]))
    assert error.kind == "http"
    assert "500" in str(error)
    assert "on purpose" not in str(error)


@pytest.mark.parametrize(
    "body",
    [
        b"<html>proxy error</html>",
        b'{"error": "not a list"}',
        b"[[]]",
        b'[[{"entity_type": "EMAIL_ADDRESS", "start": 5, "end": 999, "score": 1.0}]]',
        b'[[{"entity_type": "EMAIL_ADDRESS", "start": "5", "end": 9, "score": 1.0}]]',
    ],
)
async def test_malformed_answers_are_invalid_responses(
    start_filter: StartFilter, analyzer: Analyzer, body: bytes
) -> None:
    """Non-JSON, the wrong shape, a count mismatch or offsets outside the text are rejected."""
    presidio = await start_filter()
    analyzer.state.body = body
    error = await failure(presidio.scan_batch([SECRET_TEXT, "second text"]))
    assert error.kind == "invalid_response"


async def test_malformed_answers_count_against_the_breaker(
    start_filter: StartFilter, analyzer: Analyzer
) -> None:
    """An analyzer answering garbage opens the circuit like one answering 500."""
    presidio = await start_filter(breaker=BreakerConfig(failure_threshold=2, open_for=60))
    analyzer.state.body = b"[]"
    for i in range(2):
        assert (await failure(presidio.scan_batch([f"text {i}"]))).kind == "invalid_response"
    assert (await failure(presidio.scan_batch(["text 2"]))).kind == "breaker_open"
    assert analyzer.state.calls == 2


async def test_one_failure_reaches_every_waiting_request(
    start_filter: StartFilter, analyzer: Analyzer
) -> None:
    """Requests sharing an in-flight text all get the error of the one call made."""
    presidio = await start_filter()
    analyzer.state.stall = 0.05
    analyzer.state.fail_status = 503
    outcomes = await asyncio.gather(
        *(presidio.scan_batch([SECRET_TEXT]) for _ in range(4)), return_exceptions=True
    )
    assert [getattr(o, "kind", None) for o in outcomes] == ["http"] * 4
    assert analyzer.state.calls == 1


async def test_breaker_opens_fails_fast_and_recovers(
    start_filter: StartFilter, analyzer: Analyzer
) -> None:
    """After failure_threshold failures calls fail at once; after open_for a probe closes it."""
    presidio = await start_filter(breaker=BreakerConfig(failure_threshold=2, open_for=0.2))
    analyzer.state.fail_status = 500
    for i in range(2):
        assert (await failure(presidio.scan_batch([f"{SECRET_TEXT} {i}"]))).kind == "http"
    assert (await presidio.health()).breaker == "open"

    started = time.perf_counter()
    error = await failure(presidio.scan_batch([f"{SECRET_TEXT} 2"]))
    assert error.kind == "breaker_open"
    assert time.perf_counter() - started < 0.01
    assert analyzer.state.calls == 2

    analyzer.state.fail_status = None
    await asyncio.sleep(0.25)
    assert len((await presidio.scan_batch([SECRET_TEXT]))[0]) == 2
    assert (await presidio.health()).breaker == "closed"


async def test_breaker_open_still_serves_cached_results(
    start_filter: StartFilter, analyzer: Analyzer
) -> None:
    """An open breaker stops calls, not cache hits."""
    presidio = await start_filter(breaker=BreakerConfig(failure_threshold=1, open_for=60))
    spans = await presidio.scan_batch([SECRET_TEXT])
    analyzer.state.fail_status = 500
    assert (await failure(presidio.scan_batch(["another text"]))).kind == "http"
    assert await presidio.scan_batch([SECRET_TEXT]) == spans


async def test_full_slots_make_late_callers_overloaded(
    start_filter: StartFilter, analyzer: Analyzer
) -> None:
    """With max_in_flight calls stalled, a further caller fails after queue_timeout."""
    presidio = await start_filter(max_in_flight=2, queue_timeout=0.05)
    analyzer.state.stall = 0.3
    busy = [asyncio.create_task(presidio.scan_batch([f"slow {i}"])) for i in range(2)]
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    error = await failure(presidio.scan_batch(["one too many"]))
    assert error.kind == "overloaded"
    assert 0.05 <= time.perf_counter() - started < 0.1
    assert [len(spans) for spans in await asyncio.gather(*busy)] == [1, 1]
    assert analyzer.state.calls == 2


async def test_a_waiting_caller_gets_a_freed_slot(
    start_filter: StartFilter, analyzer: Analyzer
) -> None:
    """A caller queued for less than queue_timeout proceeds when a slot frees up."""
    presidio = await start_filter(max_in_flight=1, queue_timeout=0.5)
    analyzer.state.stall = 0.05
    results = await asyncio.gather(presidio.scan_batch(["first"]), presidio.scan_batch(["second"]))
    assert [spans for (spans,) in results] == [[], []]
    assert analyzer.state.calls == 2


async def test_health_of_a_running_analyzer(start_filter: StartFilter) -> None:
    """A live analyzer is healthy, with a latency and a closed breaker."""
    health = await (await start_filter()).health()
    assert health.healthy
    assert health.latency_ms is not None
    assert health.latency_ms > 0
    assert (health.breaker, health.error) == ("closed", None)


async def test_health_of_a_failing_analyzer(start_filter: StartFilter, analyzer: Analyzer) -> None:
    """An analyzer answering 503 is unhealthy with kind http; a stopped one with kind connect."""
    presidio = await start_filter()
    analyzer.state.fail_status = 503
    health = await presidio.health()
    assert (health.healthy, health.error) == (False, "http")
    await analyzer.server.close()
    health = await presidio.health()
    assert (health.healthy, health.latency_ms, health.error) == (False, None, "connect")


async def test_health_of_a_stalled_analyzer(start_filter: StartFilter, analyzer: Analyzer) -> None:
    """A health probe is bounded by the filter's timeout."""
    presidio = await start_filter(timeout=0.1)
    analyzer.state.stall = 1.0
    started = time.perf_counter()
    health = await presidio.health()
    assert (health.healthy, health.error) == (False, "timeout")
    assert time.perf_counter() - started < 0.15
