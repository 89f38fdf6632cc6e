"""The policy pipeline on whole requests and answers: modes, overrides, order, remote filters."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import orjson
import pytest

from gatewayd.config.schema import Action, Mode, OnError, PolicyConfig
from gatewayd.guardrails.payload import Payload
from gatewayd.guardrails.pipeline import OFF_LOOP_CHARS, Guard, RequestResult
from gatewayd.guardrails.types import Filter, Span, Stage, Verdict
from gatewayd.observability.metrics import REGISTRY

from .fakes import EMAIL, FakeRemote, RegexFilter, chat_payload, email_filter, phone_filter


def _policy(
    mode: Mode = Mode.REDACT,
    *,
    input: tuple[str, ...] = ("email", "phone"),
    output: tuple[str, ...] = (),
    restore: bool = False,
    on_error: OnError = "block",
    entities: Mapping[str, Action] | None = None,
) -> PolicyConfig:
    return PolicyConfig(
        name="p",
        mode=mode,
        input=input,
        output=output,
        restore=restore,
        on_error=on_error,
        entities=MappingProxyType(dict(entities or {})),
    )


def _filters(*extra: Filter) -> dict[str, Filter]:
    found: dict[str, Filter] = {"email": email_filter(), "phone": phone_filter()}
    found.update({f.name: f for f in extra})
    return found


def _chat(*contents: str) -> tuple[bytes, dict[str, Any]]:
    doc = {"model": "m", "messages": [{"role": "user", "content": c} for c in contents]}
    return orjson.dumps(doc), doc


def _chat_payload(*contents: str) -> tuple[bytes, Payload]:
    raw, doc = _chat(*contents)
    return raw, chat_payload(doc)


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_mode_off_reads_nothing() -> None:
    """A policy in mode off calls no filter and forwards the document as it came."""
    email = email_filter()
    guard = Guard(
        _policy(Mode.OFF, output=("email",), restore=True), {"email": email, "phone": email}
    )
    raw, doc = _chat("mail a@x.io")
    result = await guard.inspect_request(raw, chat_payload(doc))
    assert result.body == raw
    assert result.verdict.allowed
    assert email.scanned == []
    assert not guard.wants_answer(result)


async def test_monitor_counts_and_keeps_the_document() -> None:
    """Monitor finds and counts everything, and the body is the document unchanged."""
    guard = Guard(_policy(Mode.MONITOR), _filters())
    raw, doc = _chat("mail a@x.io or b@x.io", "call 555-1234")
    before = _metric(
        "gatewayd_guardrail_findings_total",
        filter="email",
        entity="EMAIL_ADDRESS",
        stage="input",
        action="monitor",
    )
    result = await guard.inspect_request(raw, chat_payload(doc))
    assert result.body == raw
    assert result.verdict == Verdict()
    assert result.summary.counts == {Stage.INPUT: {"EMAIL_ADDRESS": 2, "PHONE_NUMBER": 1}}
    assert result.summary.action is Action.MONITOR
    after = _metric(
        "gatewayd_guardrail_findings_total",
        filter="email",
        entity="EMAIL_ADDRESS",
        stage="input",
        action="monitor",
    )
    assert after - before == 2


async def test_redact_rewrites_with_numbered_placeholders() -> None:
    """Redact replaces each value, the same value with the same placeholder, and re-serialises."""
    guard = Guard(_policy(), _filters())
    raw, doc = _chat("a@x.io and b@x.io", "again a@x.io, call 555-1234")
    result = await guard.inspect_request(raw, chat_payload(doc))
    assert result.verdict.allowed
    sent = orjson.loads(result.body)
    assert [m["content"] for m in sent["messages"]] == [
        "<EMAIL_ADDRESS_1> and <EMAIL_ADDRESS_2>",
        "again <EMAIL_ADDRESS_1>, call <PHONE_NUMBER_1>",
    ]
    assert b"a@x.io" not in result.body
    assert result.redactions.restore("<EMAIL_ADDRESS_2>") == "b@x.io"
    assert result.summary.header() == "input=EMAIL_ADDRESS:3,PHONE_NUMBER:1; action=redact"


async def test_block_names_entities_and_fields_never_values() -> None:
    """Block refuses with sorted entity types and the fields they were in, once each."""
    guard = Guard(_policy(Mode.BLOCK), _filters())
    raw, doc = _chat("hello", "a@x.io call 555-1234", "b@x.io")
    result = await guard.inspect_request(raw, chat_payload(doc))
    assert result.verdict.blocked == ("EMAIL_ADDRESS",)
    assert result.verdict.blocked_fields == ("messages[1].content", "messages[2].content")
    assert result.body is raw
    assert "a@x.io" not in repr(result.verdict)


async def test_a_block_stops_the_filters_after_it() -> None:
    """Once a filter blocks, later filters are not asked: the request is refused anyway."""
    phone = phone_filter()
    guard = Guard(_policy(Mode.BLOCK), {"email": email_filter(), "phone": phone})
    raw, doc = _chat("a@x.io and 555-1234")
    result = await guard.inspect_request(raw, chat_payload(doc))
    assert result.verdict.blocked == ("EMAIL_ADDRESS",)
    assert phone.scanned == []


async def test_per_entity_overrides_beat_the_mode() -> None:
    """An entity's own action wins over the mode's, in both directions."""
    policy = _policy(
        Mode.MONITOR, entities={"PHONE_NUMBER": Action.REDACT, "EMAIL_ADDRESS": Action.MONITOR}
    )
    result = await Guard(policy, _filters()).inspect_request(*_chat_payload("a@x.io 555-1234"))
    assert orjson.loads(result.body)["messages"][0]["content"] == "a@x.io <PHONE_NUMBER_1>"

    blocking = _policy(Mode.REDACT, entities={"PHONE_NUMBER": Action.BLOCK})
    result = await Guard(blocking, _filters()).inspect_request(*_chat_payload("a@x.io 555-1234"))
    assert result.verdict.blocked == ("PHONE_NUMBER",)
    assert result.summary.counts[Stage.INPUT] == {"EMAIL_ADDRESS": 1, "PHONE_NUMBER": 1}
    assert result.summary.action is Action.BLOCK


async def test_filters_run_in_order_on_the_text_the_previous_left() -> None:
    """The second filter sees the first one's placeholders and does not redact inside them."""
    # A filter that would match the placeholder's own letters if it could.
    upper = RegexFilter("upper", {"SHOUT": r"[A-Z]{5,}"})
    guard = Guard(_policy(input=("email", "upper")), _filters(upper))
    raw, doc = _chat("HELLO a@x.io")
    result = await guard.inspect_request(raw, chat_payload(doc))
    assert upper.scanned == ["HELLO <EMAIL_ADDRESS_1>"]
    assert orjson.loads(result.body)["messages"][0]["content"] == "<SHOUT_1> <EMAIL_ADDRESS_1>"
    assert result.summary.counts[Stage.INPUT] == {"EMAIL_ADDRESS": 1, "SHOUT": 1}


async def test_filter_duration_is_observed_once_per_filter_per_stage() -> None:
    """Each filter's time is one histogram observation per request stage."""
    guard = Guard(_policy(input=("email", "timed")), _filters(email_filter("timed")))
    before = _metric("gatewayd_filter_duration_seconds_count", filter="timed")
    await guard.inspect_request(*_chat_payload("a", "b", "c"))
    assert _metric("gatewayd_filter_duration_seconds_count", filter="timed") - before == 1


async def test_requests_without_text_pass_as_they_are() -> None:
    """A body with no text the APIs define (token ids only) is forwarded untouched."""
    guard = Guard(_policy(), _filters())
    doc: dict[str, Any] = {"model": "m", "prompt": [1, 2, 3]}
    raw = orjson.dumps(doc)
    result = await guard.inspect_request(raw, chat_payload(doc))
    assert result.body == raw
    assert result.summary.counts == {}


async def test_remote_filter_gets_every_text_in_one_call() -> None:
    """A remote filter is called once per payload with all its texts, in order."""
    remote = FakeRemote()
    guard = Guard(_policy(input=("email", "remote")), _filters(remote))
    doc = {
        "messages": [
            {"role": "system", "content": "be nice"},
            {"role": "user", "content": [{"type": "text", "text": "I am Alice Smith, a@x.io"}]},
            {
                "role": "assistant",
                "tool_calls": [{"function": {"arguments": '{"to": "Bob Jones"}'}}],
            },
        ]
    }
    result = await guard.inspect_request(orjson.dumps(doc), chat_payload(doc))
    assert remote.batches == [
        ["be nice", "I am Alice Smith, <EMAIL_ADDRESS_1>", '{"to": "Bob Jones"}']
    ]
    sent = orjson.loads(result.body)["messages"]
    assert sent[1]["content"][0]["text"] == "I am <PERSON_1>, <EMAIL_ADDRESS_1>"
    assert sent[2]["tool_calls"][0]["function"]["arguments"] == '{"to": "<PERSON_2>"}'


async def test_remote_failure_with_on_error_allow_passes_unchecked() -> None:
    """on_error=allow lets the texts through unchecked by that filter, and says so."""
    remote = FakeRemote(fail="timeout")
    guard = Guard(_policy(input=("remote", "email"), on_error="allow"), _filters(remote))
    before = _metric(
        "gatewayd_filter_errors_total", filter="remote", kind="timeout", outcome="allow"
    )
    result = await guard.inspect_request(*_chat_payload("Alice Smith a@x.io"))
    assert result.verdict.allowed
    assert result.summary.unchecked == ["remote"]
    # The filters after it still run.
    assert orjson.loads(result.body)["messages"][0]["content"] == "Alice Smith <EMAIL_ADDRESS_1>"
    after = _metric(
        "gatewayd_filter_errors_total", filter="remote", kind="timeout", outcome="allow"
    )
    assert after - before == 1


async def test_remote_failure_with_on_error_block_is_unavailable() -> None:
    """on_error=block refuses the request naming the failed filter, not what it held."""
    remote = FakeRemote(fail="connect")
    guard = Guard(_policy(input=("remote",)), _filters(remote))
    raw, doc = _chat("Alice Smith")
    before = _metric(
        "gatewayd_filter_errors_total", filter="remote", kind="connect", outcome="block"
    )
    result = await guard.inspect_request(raw, chat_payload(doc))
    assert result.verdict == Verdict(unavailable="remote")
    assert result.body is raw
    after = _metric(
        "gatewayd_filter_errors_total", filter="remote", kind="connect", outcome="block"
    )
    assert after - before == 1


@pytest.mark.parametrize(
    ("policy_on_error", "filter_on_error", "allowed"),
    [("block", "allow", True), ("allow", "block", False), ("allow", None, True)],
)
async def test_a_filter_on_error_overrides_the_policy(
    policy_on_error: OnError, filter_on_error: OnError | None, allowed: bool
) -> None:
    """The filter's own on_error wins; without one the policy's applies."""
    remote = FakeRemote(fail="http", on_error=filter_on_error)
    guard = Guard(_policy(input=("remote",), on_error=policy_on_error), _filters(remote))
    result = await guard.inspect_request(*_chat_payload("x"))
    assert result.verdict.allowed is allowed


async def _redacted(guard: Guard, *contents: str) -> RequestResult:
    result = await guard.inspect_request(*_chat_payload(*contents))
    assert result.verdict.allowed
    return result


def _answer(content: str) -> tuple[bytes, dict[str, Any]]:
    doc = {
        "id": "x",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
    }
    return orjson.dumps(doc), doc


async def test_response_restores_this_requests_placeholders() -> None:
    """Placeholders the request issued come back as values; others stay as the model wrote them."""
    guard = Guard(_policy(restore=True), _filters())
    request = await _redacted(guard, "mail a@x.io or 555-1234")
    raw, doc = _answer("Wrote <EMAIL_ADDRESS_1>, not <EMAIL_ADDRESS_4>; called <PHONE_NUMBER_1>.")
    result = await guard.inspect_response(raw, doc, request)
    content = orjson.loads(result.body)["choices"][0]["message"]["content"]
    assert content == "Wrote a@x.io, not <EMAIL_ADDRESS_4>; called 555-1234."
    assert guard.wants_answer(request)


async def test_restored_values_are_not_redacted_or_counted_again() -> None:
    """Output filters skip restored values but still act on new findings."""
    guard = Guard(_policy(restore=True, output=("email",)), _filters())
    request = await _redacted(guard, "I am a@x.io")
    raw, doc = _answer("Hi <EMAIL_ADDRESS_1>, write to c@y.io")
    result = await guard.inspect_response(raw, doc, request)
    content = orjson.loads(result.body)["choices"][0]["message"]["content"]
    assert content == "Hi a@x.io, write to <EMAIL_ADDRESS_2>"
    assert request.summary.counts[Stage.OUTPUT] == {"EMAIL_ADDRESS": 1}


async def test_unchanged_response_is_the_original_bytes() -> None:
    """An answer with nothing to restore or redact is forwarded as the same object."""
    guard = Guard(_policy(restore=True, output=("email",)), _filters())
    request = await _redacted(guard, "I am a@x.io")
    raw, doc = _answer("nothing to see")
    assert (await guard.inspect_response(raw, doc, request)).body is raw


async def test_output_block_refuses_the_answer() -> None:
    """An output finding whose action is block makes the answer's verdict blocked."""
    guard = Guard(
        _policy(Mode.MONITOR, input=(), output=("phone",), entities={"PHONE_NUMBER": Action.BLOCK}),
        _filters(),
    )
    request = await guard.inspect_request(*_chat_payload("hi"))
    raw, doc = _answer("call 555-1234")
    result = await guard.inspect_response(raw, doc, request)
    assert result.verdict.blocked == ("PHONE_NUMBER",)
    assert result.verdict.blocked_fields == ("choices[0].message.content",)
    assert result.body is raw


async def test_remote_output_filter_batches_and_applies_on_error() -> None:
    """The answer's texts go to a remote filter in one call; its failure follows on_error."""
    remote = FakeRemote()
    guard = Guard(_policy(input=(), output=("remote",)), _filters(remote))
    request = await guard.inspect_request(*_chat_payload("hi"))
    doc = {"choices": [{"message": {"content": "Bob Stone"}}, {"message": {"content": "Alice Wu"}}]}
    result = await guard.inspect_response(orjson.dumps(doc), doc, request)
    assert remote.batches == [["Bob Stone", "Alice Wu"]]
    assert b"Bob" not in result.body
    assert b"<PERSON_2>" in result.body

    remote.fail = "timeout"
    result = await guard.inspect_response(orjson.dumps(doc), doc, request)
    assert result.verdict == Verdict(unavailable="remote")


async def test_wants_answer_only_with_output_filters_or_placeholders_to_restore() -> None:
    """The proxy hands the answer to the guard only when there is work: filters or restores."""
    plain = Guard(_policy(), _filters())
    restoring = Guard(_policy(restore=True), _filters())
    filtering = Guard(_policy(input=(), output=("email",)), _filters())
    nothing = await restoring.inspect_request(*_chat_payload("no personal data here"))
    redacted = await _redacted(restoring, "mail a@x.io")
    assert not plain.wants_answer(redacted)
    assert not restoring.wants_answer(nothing)
    assert restoring.wants_answer(redacted)
    assert filtering.wants_answer(await filtering.inspect_request(*_chat_payload("hello")))


class _ThreadNoting(RegexFilter):
    """Finds EMAIL_ADDRESS like email_filter, noting the thread of each scan."""

    def __init__(self, wait_for: threading.Event | None = None) -> None:
        super().__init__("email", {"EMAIL_ADDRESS": EMAIL})
        self.threads: list[int] = []
        self._wait_for = wait_for

    def scan(self, text: str) -> list[Span]:
        """Spans of every e-mail, once `wait_for` (if any) is set."""
        self.threads.append(threading.get_ident())
        if self._wait_for is not None:
            assert self._wait_for.wait(timeout=5), "the loop stood still during the scan"
        return super().scan(text)


async def test_long_payloads_are_scanned_in_a_thread_and_short_ones_inline() -> None:
    """Texts of OFF_LOOP_CHARS or more in all are scanned off the loop, and redacted the same."""
    email = _ThreadNoting()
    guard = Guard(_policy(input=("email",)), {"email": email})
    before = _metric("gatewayd_guardrail_off_loop_scans_total")
    # Short words: the fake's e-mail regex is slow on long ones.
    filler = "word " * (OFF_LOOP_CHARS // 10 + 1)
    await guard.inspect_request(*_chat_payload("short a@x.io"))
    result = await guard.inspect_request(*_chat_payload(filler, f"{filler} a@x.io"))
    loop_thread = threading.get_ident()
    assert email.threads[0] == loop_thread
    assert email.threads[1] != loop_thread
    assert email.threads[1] == email.threads[2]
    assert orjson.loads(result.body)["messages"][1]["content"].endswith(" <EMAIL_ADDRESS_1>")
    # Two hand-offs: the placeholders the client wrote are reserved, then the filters run.
    assert _metric("gatewayd_guardrail_off_loop_scans_total") - before == 2


async def test_the_loop_runs_while_a_long_payload_is_scanned() -> None:
    """A callback the loop runs only after the scan started lets the scan finish."""
    released = threading.Event()
    guard = Guard(_policy(input=("email",)), {"email": _ThreadNoting(released)})
    asyncio.get_running_loop().call_later(0.01, released.set)
    result = await guard.inspect_request(*_chat_payload("word " * (OFF_LOOP_CHARS // 5 + 1)))
    assert result.verdict.allowed
