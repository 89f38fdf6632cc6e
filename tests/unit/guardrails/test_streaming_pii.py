"""The streaming guard with the real pii filter: a stream reads like the whole answer."""

from __future__ import annotations

from types import MappingProxyType

import orjson
import pytest

from gatewayd.config.schema import Action, Mode, PiiFilterConfig, PolicyConfig
from gatewayd.guardrails.filters import build_filter
from gatewayd.guardrails.pipeline import Guard, RequestResult
from gatewayd.guardrails.sse import SSEParser
from gatewayd.guardrails.types import Stage

from .fakes import chat_chunk, chat_payload, sse, streamed_text

ANSWERS = {
    "Call +1 (415) 555-2671 or mail jane.doe@example.com today.": (
        "Call <PHONE_NUMBER_1> or mail <EMAIL_ADDRESS_1> today."
    ),
    "Card 4111 1111 1111 1111, IBAN DE89 3704 0044 0532 0130 00, host 192.168.10.20.": (
        "Card <CREDIT_CARD_1>, IBAN <IBAN_CODE_1>, host <IP_ADDRESS_1>."
    ),
    "SSN 123-45-6789 then 10.0.0.1": "SSN <US_SSN_1> then <IP_ADDRESS_1>",
    # Both depend on words well before the number: the stream must still see them.
    "My social security number is 078051120, thanks": (
        "My social security number is <US_SSN_1>, thanks"
    ),
    "Running the release version 10.1.2.3 now": "Running the release version 10.1.2.3 now",
}


def _guard(restore: bool = False) -> Guard:
    policy = PolicyConfig(
        name="pii",
        mode=Mode.REDACT,
        input=("pii",),
        output=("pii",),
        restore=restore,
        entities=MappingProxyType({"US_SSN": Action.REDACT}),
    )
    return Guard(policy, {"pii": build_filter(PiiFilterConfig(name="pii"))})


async def _whole(guard: Guard, request: RequestResult, answer: str) -> str:
    doc = {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]}
    result = await guard.inspect_response(orjson.dumps(doc), doc, request)
    content: str = orjson.loads(result.body)["choices"][0]["message"]["content"]
    return content


async def _streamed(guard: Guard, request: RequestResult, pieces: list[str]) -> str:
    stream = guard.stream(request)
    out = b""
    for piece in pieces:
        out += await stream.feed(sse(chat_chunk(piece)))
    out += await stream.feed(sse(chat_chunk(finish="stop"), "[DONE]"))
    out += await stream.finish()
    return streamed_text(out)


async def _request(guard: Guard, content: str = "hello") -> RequestResult:
    doc = {"messages": [{"role": "user", "content": content}]}
    return await guard.inspect_request(orjson.dumps(doc), chat_payload(doc))


@pytest.mark.parametrize(("answer", "expected"), ANSWERS.items())
async def test_every_two_way_split_reads_like_the_whole_answer(answer: str, expected: str) -> None:
    """Split at any position into two events, the client reads what the whole answer gives."""
    guard = _guard()
    assert await _whole(guard, await _request(guard), answer) == expected
    for cut in range(1, len(answer)):
        got = await _streamed(guard, await _request(guard), [answer[:cut], answer[cut:]])
        assert got == expected, cut


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("answer", ANSWERS)
async def test_small_token_sizes_read_like_the_whole_answer(answer: str, size: int) -> None:
    """Token-sized events give the same text as the whole answer."""
    guard = _guard()
    expected = await _whole(guard, await _request(guard), answer)
    pieces = [answer[i : i + size] for i in range(0, len(answer), size)]
    assert await _streamed(guard, await _request(guard), pieces) == expected


async def test_restore_and_redact_together_at_every_split() -> None:
    """The request's own phone number comes back; a new one in the answer is redacted."""
    guard = _guard(restore=True)
    answer = "I will call <PHONE_NUMBER_1>, not (212) 555-0147."
    for cut in range(1, len(answer)):
        request = await _request(guard, "my number is +1 415 555 2671")
        assert request.redactions.restore("<PHONE_NUMBER_1>") == "+1 415 555 2671"
        got = await _streamed(guard, request, [answer[:cut], answer[cut:]])
        assert got == "I will call +1 415 555 2671, not <PHONE_NUMBER_2>.", cut
        assert request.summary.counts[Stage.OUTPUT] == {"PHONE_NUMBER": 1}, cut


async def test_comments_and_unknown_fields_do_not_carry_text_past_the_guard() -> None:
    """An SSE comment or unknown field is read by no filter: it is left out, a
    comment-only keep-alive goes on emptied, and names, ids and retries stay."""
    guard = _guard()
    request = await _request(guard, "hello")
    stream = guard.stream(request)
    out = await stream.feed(b": mail jane.doe@example.com\n\n")
    out += await stream.feed(b"x-note: jane.doe@example.com\nid: 7\n" + sse(chat_chunk("Hi")))
    out += await stream.feed(b"retry: 3000\n: jane.doe@example.com\n" + sse(chat_chunk(" there")))
    out += await stream.feed(sse(chat_chunk(finish="stop"), "[DONE]"))
    out += await stream.finish()
    assert b"jane.doe" not in out
    assert out.startswith(b":\n\nid: 7\ndata: ")
    assert b"retry: 3000\ndata: " in out
    parsed = SSEParser().feed(out)
    assert streamed_text(sse(*(e.data.decode() for e in parsed if e.data))) == "Hi there"
