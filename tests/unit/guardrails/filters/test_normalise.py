"""The normalised view: what it folds, how offsets map back, and redaction on the text as typed."""

from __future__ import annotations

import random
from types import MappingProxyType
from typing import Any

import orjson
import pytest

from gatewayd.config.schema import Mode, PiiFilterConfig, PolicyConfig, SecretsFilterConfig
from gatewayd.guardrails.filters import _normalise
from gatewayd.guardrails.filters._normalise import FOLD, View, view
from gatewayd.guardrails.filters.regex_pii import PiiFilter
from gatewayd.guardrails.filters.secrets import SecretsFilter
from gatewayd.guardrails.pipeline import Guard
from gatewayd.guardrails.types import Span

from ..fakes import chat_payload

PII = PiiFilter(PiiFilterConfig(name="pii"))
SECRETS = SecretsFilter(SecretsFilterConfig(name="secrets"))


def found(text: str) -> list[tuple[str, str]]:
    """(entity, text as typed) for every finding of both filters."""
    return [(s.entity, text[s.start : s.end]) for f in (PII, SECRETS) for s in f.scan(text)]


@pytest.mark.parametrize(
    ("text", "entity", "value"),
    [
        ("call ０９０-１２３４-５６７８ today", "PHONE_NUMBER", "０９０-１２３４-５６７８"),
        (
            "mail ｊａｎｅ＠ｅｘａｍｐｌｅ．ｃｏｍ now",
            "EMAIL_ADDRESS",
            "ｊａｎｅ＠ｅｘａｍｐｌｅ．ｃｏｍ",
        ),
        (
            "card 4111\u00a01111\u00a01111\u00a01111 ok",
            "CREDIT_CARD",
            "4111\u00a01111\u00a01111\u00a01111",
        ),
        (
            "card 4111\u20091111\u20091111\u20091111 ok",
            "CREDIT_CARD",
            "4111\u20091111\u20091111\u20091111",
        ),
        ("ssn 123-45-67\u200b89 on file", "US_SSN", "123-45-67\u200b89"),
        (
            "card 4111\u00ad1111\u00ad1111\u00ad1111",
            "CREDIT_CARD",
            "4111\u00ad1111\u00ad1111\u00ad1111",
        ),
        ("بطاقة ٤١١١١١١١١١١١١١١١ شكرا", "CREDIT_CARD", "٤١١١١١١١١١١١١١١١"),
        ("फ़ोन +१ ४१५-५५५-२६७१ है", "PHONE_NUMBER", "+१ ४१५-५५५-२६७१"),
        ("host 10.0.\u200d0.1 up", "IP_ADDRESS", "10.0.\u200d0.1"),
        ("pass\u200bword = 'hunter2!x9'", "PASSWORD", "hunter2!x9"),
        (
            "key ＡＫＩＡＭＵＡＰＴＴ０ＺＮ３Ｘ０ＰＤＱＸ",
            "AWS_ACCESS_KEY",
            "ＡＫＩＡＭＵＡＰＴＴ０ＺＮ３Ｘ０ＰＤＱＸ",
        ),
    ],
)
def test_what_a_model_reads_as_a_value_is_found_as_typed(
    text: str, entity: str, value: str
) -> None:
    """Fullwidth, no-break or thin spaces, invisible characters and other digits hide nothing."""
    assert (entity, value) in found(text)


def test_invisible_characters_around_a_value_stay_outside_it() -> None:
    """A finding starts and ends at its own characters, not at a zero-width one beside it."""
    text = "mail \u200bbob@example.com\u200b now"
    assert found(text) == [("EMAIL_ADDRESS", "bob@example.com")]


def test_a_ligature_inside_a_value_is_covered_whole() -> None:
    """A character that folds into two ('ﬁ' to 'fi') is inside a finding as one."""
    text = "write to ﬁona@example.com"
    assert found(text) == [("EMAIL_ADDRESS", "ﬁona@example.com")]


def test_text_with_nothing_to_fold_is_its_own_view() -> None:
    """ASCII text, accents, curly quotes and emoji make no view: nothing is copied."""
    for text in ("plain", "café “quoted” – 😀", "İstanbul ß"):
        assert view(text) is None


def test_the_fold_table_covers_each_class() -> None:
    """Invisible, space, digit and NFKC-to-ASCII characters are in the table with their folds."""
    assert FOLD["\u200b"] == FOLD["\u00ad"] == FOLD["\ufeff"] == FOLD["\ufe0f"] == ""
    assert FOLD["\u00a0"] == FOLD["\u202f"] == FOLD["\u3000"] == " "
    assert FOLD["\u0663"] == FOLD["\uff13"] == FOLD["\U0001d7d1"] == "3"
    assert FOLD["\uff20"] == "@"
    assert FOLD["\u2026"] == "..."
    assert "é" not in FOLD
    assert "\U0001f600" not in FOLD


def test_view_offsets_map_back_onto_the_characters_they_came_from() -> None:
    """Every view character's span maps to the text's characters that produced it."""
    rng = random.Random(5)
    alphabet = ["a", "1", " ", "\u200b", "\u00ad", "ﬁ", "…", "１", "\u00a0", "😀", "é"]
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 20)))
        folded = view(text)
        if folded is None:
            continue
        for i in range(len(folded.text)):
            start, end = folded.start(i), folded.end(i + 1)
            source = text[start:end]
            assert source, (text, i)
            assert source.strip("\u200b\u00ad") == source, (text, i)
            assert folded.text[i] in "".join(FOLD.get(ch, ch) for ch in source), (text, i)


def test_spans_of_a_view_without_length_changes_are_unchanged() -> None:
    """When every fold is one character for one, the view's offsets are the text's."""
    folded = view("x １２３ y")
    assert folded is not None
    assert folded.spans([Span("X", 2, 5)]) == [Span("X", 2, 5)]


def test_holdback_counts_characters_as_typed() -> None:
    """A value still arriving in fullwidth digits is held back whole, counted in the text."""
    text = "call me at ０９０-１２３"
    assert PII.open_tail(text) == len("０９０-１２３")
    assert SECRETS.open_tail("my pass\u200bwo") == len("pass\u200bwo")


async def test_redaction_replaces_exactly_what_was_typed_and_restore_puts_it_back() -> None:
    """The placeholder stands in for the typed characters; the answer gets them back unchanged."""
    policy = PolicyConfig(
        name="p",
        mode=Mode.REDACT,
        input=("pii",),
        output=(),
        restore=True,
        entities=MappingProxyType({}),
    )
    guard = Guard(policy, {"pii": PII})
    typed = "card 4111\u00a01111\u00a01111\u00a01111 and \u200bｂｏｂ＠ｅｘａｍｐｌｅ．ｃｏｍ."
    doc: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": typed}]}
    request = await guard.inspect_request(orjson.dumps(doc), chat_payload(doc))
    sent = orjson.loads(request.body)["messages"][0]["content"]
    assert sent == "card <CREDIT_CARD_1> and \u200b<EMAIL_ADDRESS_1>."
    answer = {
        "id": "x",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": sent}}],
    }
    result = await guard.inspect_response(orjson.dumps(answer), answer, request)
    assert orjson.loads(result.body)["choices"][0]["message"]["content"] == typed


def test_each_text_is_folded_once_for_both_filters(monkeypatch: pytest.MonkeyPatch) -> None:
    """secrets over a request's texts, then pii over them, builds each text's view once."""
    built: list[str] = []

    def counted(text: str) -> View | None:
        built.append(text)
        return view(text)

    monkeypatch.setattr(_normalise, "view", counted)
    texts = [f"message {i}: call ０９０-１２３４-５６７{i}" for i in range(3)]
    for flt in (SECRETS, PII):
        for text in texts:
            flt.scan(text)
    assert built == texts
