"""Token usage read from an answer without parsing all of it."""

from __future__ import annotations

import orjson

from gatewayd.proxy import usage_of


def test_usage_last_with_nested_details() -> None:
    """The usual layout, usage last with nested detail objects, is read whole."""
    usage = {
        "prompt_tokens": 12,
        "completion_tokens": 5,
        "total_tokens": 17,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    raw = orjson.dumps({"id": "x", "choices": [{"text": '"usage": {"a": 1}'}], "usage": usage})
    assert usage_of(raw + b"\n") == usage
    pretty = orjson.dumps({"data": [], "usage": usage}, option=orjson.OPT_INDENT_2)
    assert usage_of(pretty) == usage


def test_usage_elsewhere_or_missing_is_none() -> None:
    """An answer without usage, or with usage not last, gives None rather than a guess."""
    assert usage_of(orjson.dumps({"choices": []})) is None
    assert usage_of(orjson.dumps({"usage": {"prompt_tokens": 1}, "id": "x"})) is None
    assert usage_of(b"not json") is None
