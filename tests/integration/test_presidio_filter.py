"""The Presidio filter against a real analyzer: what it finds, what it sends, what it caches."""

from __future__ import annotations

import asyncio

import redis.asyncio as redis

from gatewayd.guardrails.filters.presidio_cache import REDIS_PREFIX
from gatewayd.guardrails.types import RemoteFilter, Span
from gatewayd.observability.metrics import REGISTRY
from tests.fakes.presidio_server import Analyzer, StartFilter

IBAN = "DE89 3704 0044 0532 0130 00"
EMAIL = "john.doe@example.com"
CARD = "4111 1111 1111 1111"


def metric(name: str, **labels: str) -> float:
    """The current value of one gatewayd metric sample, 0 when never touched."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def found(text: str, spans: list[Span]) -> list[tuple[str, str]]:
    """Each span as (entity, the text it covers)."""
    return [(s.entity, text[s.start : s.end]) for s in spans]


async def test_is_a_remote_filter(start_filter: StartFilter) -> None:
    """The filter satisfies the RemoteFilter protocol the pipeline awaits."""
    presidio = await start_filter(on_error="allow")
    assert isinstance(presidio, RemoteFilter)
    assert (presidio.name, presidio.on_error) == ("presidio", "allow")


async def test_finds_entities_at_code_point_offsets(start_filter: StartFilter) -> None:
    """IBAN, e-mail and card after accents, emoji and CJK come back at code-point offsets."""
    presidio = await start_filter()
    texts = [
        f"Grüße, überweise an {IBAN} bitte",
        f"😀 écris-moi: {EMAIL}",
        f"信用卡号 {CARD} 谢谢",
    ]
    spans = await presidio.scan_batch(texts)
    assert found(texts[0], spans[0]) == [("IBAN_CODE", IBAN)]
    # The analyzer also reports the domain as a URL inside the address; one range keeps one span.
    assert found(texts[1], spans[1]) == [("EMAIL_ADDRESS", EMAIL)]
    assert found(texts[2], spans[2]) == [("CREDIT_CARD", CARD)]
    assert all(0.0 < s.score <= 1.0 for per_text in spans for s in per_text)


async def test_all_texts_of_a_request_go_in_one_call(
    start_filter: StartFilter, analyzer: Analyzer
) -> None:
    """N texts needing analysis cost one HTTP call carrying all N, and the metrics say so."""
    presidio = await start_filter(name="batched")
    calls = metric("gatewayd_presidio_calls_total", filter="batched")
    texts = [f"message {i}: reach me at user{i}@example.org" for i in range(6)]
    spans = await presidio.scan_batch(texts)
    assert [found(t, s) for t, s in zip(texts, spans, strict=True)] == [
        [("EMAIL_ADDRESS", f"user{i}@example.org")] for i in range(6)
    ]
    assert (analyzer.state.calls, analyzer.state.texts) == (1, 6)
    assert metric("gatewayd_presidio_calls_total", filter="batched") == calls + 1
    assert metric("gatewayd_presidio_texts_total", filter="batched") >= 6
    assert metric("gatewayd_presidio_duration_seconds_count", filter="batched") >= 1


async def test_single_text_mode_for_older_analyzers(
    start_filter: StartFilter, analyzer: Analyzer
) -> None:
    """With batch off, each text is its own call with `text` a string, answered in order."""
    presidio = await start_filter(batch=False)
    texts = [f"iban {IBAN}", "nothing here", f"mail {EMAIL}"]
    spans = await presidio.scan_batch(texts)
    assert [found(t, s) for t, s in zip(texts, spans, strict=True)] == [
        [("IBAN_CODE", IBAN)],
        [],
        [("EMAIL_ADDRESS", EMAIL)],
    ]
    assert (analyzer.state.calls, analyzer.state.texts) == (3, 3)


async def test_blank_and_repeated_texts_are_not_sent(
    start_filter: StartFilter, analyzer: Analyzer
) -> None:
    """Empty and whitespace texts need no call; a text twice in one batch is sent once."""
    presidio = await start_filter()
    text = f"card {CARD}"
    spans = await presidio.scan_batch(["", "  \n", text, text])
    assert spans[:2] == [[], []]
    assert found(text, spans[2]) == found(text, spans[3]) == [("CREDIT_CARD", CARD)]
    assert analyzer.state.texts == 1
    assert await presidio.scan_batch(["", " "]) == [[], []]
    assert analyzer.state.calls == 1


async def test_multi_turn_chat_sends_only_new_messages(
    start_filter: StartFilter, analyzer: Analyzer
) -> None:
    """Turn k of a conversation sends the analyzer its one new message, not the history."""
    presidio = await start_filter(name="chat")
    history: list[str] = []
    for turn in range(1, 6):
        history.append(f"turn {turn}: my address is person{turn}@example.net")
        spans = await presidio.scan_batch(history)
        assert analyzer.state.last_texts == [history[-1]]
        # Every earlier message (user or reply) was analysed exactly once.
        assert analyzer.state.texts == 2 * turn - 1
        assert [len(s) for s in spans] == [1, 0] * (turn - 1) + [1]
        reply = f"Noted, turn {turn}."
        # The answer scanned as output is cached for the next turn's input too.
        assert await presidio.scan_batch([reply]) == [[]]
        history.append(reply)
    assert analyzer.state.texts == 10
    assert metric("gatewayd_presidio_cache_total", filter="chat", tier="memory", result="hit") > 0


async def test_cache_key_includes_analysis_parameters(
    start_filter: StartFilter, analyzer: Analyzer
) -> None:
    """Entities and allow_list reach the analyzer; filters differing in them share no results."""
    text = f"mail {EMAIL}, iban {IBAN}"
    only_iban = await start_filter(entities=("IBAN_CODE",))
    allowed = await start_filter(allow_list=(EMAIL,), entities=("EMAIL_ADDRESS", "IBAN_CODE"))
    assert found(text, (await only_iban.scan_batch([text]))[0]) == [("IBAN_CODE", IBAN)]
    assert found(text, (await allowed.scan_batch([text]))[0]) == [("IBAN_CODE", IBAN)]
    assert analyzer.state.calls == 2


async def test_concurrent_identical_texts_are_analysed_once(
    start_filter: StartFilter, analyzer: Analyzer
) -> None:
    """Requests carrying the same text at the same moment share one analysis."""
    presidio = await start_filter()
    analyzer.state.stall = 0.1
    text = f"transfer to {IBAN}"
    results = await asyncio.gather(*(presidio.scan_batch([text, "hello"]) for _ in range(8)))
    assert all(r == results[0] for r in results)
    assert found(text, results[0][0]) == [("IBAN_CODE", IBAN)]
    assert (analyzer.state.calls, analyzer.state.texts) == (1, 2)


async def test_a_cancelled_caller_leaves_the_others_their_answer(
    start_filter: StartFilter, analyzer: Analyzer
) -> None:
    """The request that started an analysis going away does not fail those waiting on it."""
    presidio = await start_filter()
    analyzer.state.stall = 0.1
    text = f"mail {EMAIL}"
    first = asyncio.create_task(presidio.scan_batch([text]))
    await asyncio.sleep(0.02)
    second = asyncio.create_task(presidio.scan_batch([text]))
    await asyncio.sleep(0.02)
    first.cancel()
    assert found(text, (await second)[0]) == [("EMAIL_ADDRESS", EMAIL)]
    assert first.cancelled()
    assert analyzer.state.calls == 1


async def test_redis_shares_results_between_instances(
    start_filter: StartFilter, analyzer: Analyzer, redis_url: str
) -> None:
    """A second instance with an empty memory cache gets the first one's results from Redis."""
    text = f"iban {IBAN}"
    first = await start_filter(name="shared", redis_url=redis_url)
    expected = await first.scan_batch([text, "no entity"])
    hits = metric("gatewayd_presidio_cache_total", filter="shared", tier="redis", result="hit")
    second = await start_filter(name="shared", redis_url=redis_url)
    assert await second.scan_batch([text, "no entity"]) == expected
    assert analyzer.state.calls == 1
    assert (
        metric("gatewayd_presidio_cache_total", filter="shared", tier="redis", result="hit")
        == hits + 2
    )
    client = redis.Redis.from_url(redis_url)
    try:
        keys = await client.keys(REDIS_PREFIX + "*")
        assert len(keys) == 2
        ttl = await client.pttl(keys[0])
        assert 0 < ttl <= 600_000
        for value in await client.mget(keys):
            assert isinstance(value, bytes)
            assert IBAN.encode() not in value
    finally:
        await client.aclose()


async def test_unreachable_redis_degrades_to_memory(
    start_filter: StartFilter, analyzer: Analyzer, unused_tcp_port: int
) -> None:
    """With Redis down, requests still get answers and the failure is counted, not raised."""
    presidio = await start_filter(name="no-redis", redis_url=f"redis://127.0.0.1:{unused_tcp_port}")
    errors = metric(
        "gatewayd_presidio_cache_total", filter="no-redis", tier="redis", result="error"
    )
    text = f"mail {EMAIL}"
    assert found(text, (await presidio.scan_batch([text]))[0]) == [("EMAIL_ADDRESS", EMAIL)]
    assert found(text, (await presidio.scan_batch([text]))[0]) == [("EMAIL_ADDRESS", EMAIL)]
    assert analyzer.state.calls == 1
    assert (
        metric("gatewayd_presidio_cache_total", filter="no-redis", tier="redis", result="error")
        > errors
    )
