"""Token reservations a client cannot talk down, and the usage event asked for on its behalf."""

from __future__ import annotations

import orjson

from gatewayd.ratelimit.tokens import UsageEventStrip, reservation, wants_usage_event

CHAT = "/v1/chat/completions"


def test_the_largest_output_cap_counts() -> None:
    """max_tokens 1 beside max_completion_tokens 10000 reserves the 10000."""
    doc = {"max_tokens": 1, "max_completion_tokens": 10000}
    assert reservation(doc, 400, CHAT, 4096) == 100 + 10000


def test_every_choice_is_reserved() -> None:
    """n choices reserve n times the output."""
    assert reservation({"max_tokens": 100, "n": 5}, 0, CHAT, 4096) == 500


def test_no_cap_reserves_the_default_and_odd_values_do_not_lower_it() -> None:
    """Without a usable cap (absent, negative, a string, a bool) the default is reserved."""
    for doc in ({}, {"max_tokens": -5}, {"max_tokens": "1"}, {"max_tokens": True}, None):
        assert reservation(doc, 0, CHAT, 4096) == 4096


def test_embeddings_reserve_the_prompt_only() -> None:
    """Endpoints that generate nothing reserve only their input."""
    assert reservation({"max_tokens": 100}, 4000, "/v1/embeddings", 4096) == 1000


def test_usage_is_asked_for_streams_that_did_not() -> None:
    """Chat and completions streams without include_usage are asked for it; others are not."""
    assert wants_usage_event({"stream": True}, CHAT)
    assert wants_usage_event({"stream": True, "stream_options": {}}, "/v1/completions")
    assert not wants_usage_event({"stream": True, "stream_options": {"include_usage": True}}, CHAT)
    assert not wants_usage_event({"stream": False}, CHAT)
    assert not wants_usage_event({"stream": True}, "/v1/responses")


def _event(doc: object) -> bytes:
    return b"data: " + orjson.dumps(doc) + b"\n\n"


def test_the_usage_event_is_taken_out_byte_by_byte() -> None:
    """Only the empty-choices usage event goes, even fed a byte at a time; its usage is kept."""
    delta = _event({"choices": [{"delta": {"content": "hi"}}], "usage": None})
    usage = _event({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
    stream = delta + usage + b"data: [DONE]\n\n"
    strip = UsageEventStrip()
    out = b"".join(strip.feed(stream[i : i + 1]) for i in range(len(stream))) + strip.finish()
    assert out == delta + b"data: [DONE]\n\n"
    assert strip.usage == {"prompt_tokens": 3, "completion_tokens": 2}


def test_a_usage_lookalike_with_choices_stays() -> None:
    """An event that has choices is the client's, whatever else it carries."""
    event = _event({"choices": [{"delta": {}}], "usage": {"prompt_tokens": 1}})
    strip = UsageEventStrip()
    assert strip.feed(event) == event
    assert strip.usage is None
