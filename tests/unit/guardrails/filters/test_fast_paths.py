"""The filters' shortcuts find exactly what the long way finds.

Each shortcut is compared with the plain computation it replaces, over the
labelled corpus and pseudo-random texts built from its values, separators,
digits, capitals and non-ASCII letters.
"""

from __future__ import annotations

import random
import re

import pytest

from gatewayd.config.schema import CustomPattern, PiiFilterConfig, SecretsFilterConfig
from gatewayd.guardrails.filters import regex_pii, secrets
from gatewayd.guardrails.filters._normalise import scan_view
from gatewayd.guardrails.filters._spans import fold_case, resolve, tail_holdback
from gatewayd.guardrails.filters.regex_pii import PiiFilter
from gatewayd.guardrails.filters.secrets import SecretsFilter
from gatewayd.guardrails.types import Span
from tests.corpus.evaluate import CORPUS, load

SAMPLES = load(CORPUS.glob("*.jsonl"))
PIECES = [value for s in SAMPLES for _, value in s.expected] + [
    "DE89",
    "GB82WEST",
    "AB12",
    "(415)",
    "+1",
    "::",
    "fe80::1",
    "1.2.3",
    "@",
    "x@y.io",
    "İstanbul",
    "ß",
    "xox",
    "xoxq-1234567890abc",
    "sk-",
    "password is",
    "TOKEN=",
    "://u:",
    "@h",
]
ALPHABET = "AB12 (+.-:@xZ9Éa_=\n"


def _texts(count: int = 1500) -> list[str]:
    """The corpus texts, then texts pieced together from values and odd characters."""
    rng = random.Random(7)
    texts = [s.text for s in SAMPLES]
    for _ in range(count):
        parts = []
        for _ in range(rng.randrange(1, 8)):
            if rng.random() < 0.5:
                parts.append(rng.choice(PIECES))
            else:
                parts.append("".join(rng.choice(ALPHABET) for _ in range(rng.randrange(1, 12))))
        texts.append(rng.choice(["", " "]).join(parts))
    return texts


TEXTS = _texts()
PII = [
    PiiFilter(PiiFilterConfig(name="pii")),
    PiiFilter(PiiFilterConfig(name="numbers", entities=("PHONE_NUMBER", "IBAN_CODE"))),
    PiiFilter(PiiFilterConfig(name="ip", entities=("IP_ADDRESS",))),
    PiiFilter(PiiFilterConfig(name="custom", custom=(CustomPattern("TICKET", r"TCK-\d+"),))),
]

# The anchors as first written: an IBAN anchored at its country code.
_CAPITAL_ANCHOR = re.compile(r"[0-9(+A-Z](?:(?<=[A-Z])[A-Z][0-9]{2}|(?<![A-Z])[0-9 .()+-]{6,})")


def _anchors_at_country_code(text: str) -> list[tuple[int, int]]:
    """Clusters as spans and IBAN anchors as (start, -1), the way the first regex found them."""
    return [
        (m.start(), -1) if m.group()[0].isupper() else m.span()
        for m in _CAPITAL_ANCHOR.finditer(text)
    ]


def _anchors(text: str) -> list[tuple[int, int]]:
    """The same from the anchor regex the filter uses, which starts IBANs at their digits."""
    return [
        (m.start() - 2, -1) if m.end() - m.start() == 2 else m.span()
        for m in regex_pii._ANCHOR.finditer(text)
    ]


def test_anchors_at_the_check_digits_are_those_at_the_country_code() -> None:
    """Starting IBAN anchors at their check digits anchors the same places as at the letters."""
    for text in TEXTS:
        assert _anchors(text) == _anchors_at_country_code(text), text


def _every_search(flt: PiiFilter, text: str) -> list[Span]:
    """What scan finds with every search run on every text, no test deciding to skip one."""
    return scan_view(lambda folded: _every_search_of(flt, folded), text)


def _every_search_of(flt: PiiFilter, text: str) -> list[Span]:
    found: list[Span] = []
    if flt._emails:
        regex_pii._find_emails(text, found, urls=True)
    flt._scan_anchors(text, found)
    if flt._ipv6:
        regex_pii._find_ipv6(text, found)
    for entity, pattern in flt._custom:
        found += [Span(entity, *m.span()) for m in pattern.finditer(text) if m.end() > m.start()]
    return resolve(found, regex_pii._RANK)


@pytest.mark.parametrize("flt", PII, ids=lambda f: f.name)
def test_skipping_searches_skips_only_what_finds_nothing(flt: PiiFilter) -> None:
    """The '@', digit and colon tests in front of each search change no result."""
    for text in TEXTS:
        assert flt.scan(text) == _every_search(flt, text), text


def test_the_digit_test_agrees_with_a_regex() -> None:
    """_has_digit is true exactly when an ASCII digit is in the text."""
    digit = re.compile("[0-9]")
    for text in [*TEXTS, "", "٣", "x9"]:
        assert regex_pii._has_digit(text) is (digit.search(text) is not None)


SECRETS = [
    SecretsFilter(SecretsFilterConfig(name="secrets")),
    SecretsFilter(SecretsFilterConfig(name="slack", entities=("SLACK_TOKEN", "PASSWORD"))),
]


def _every_secret_search(flt: SecretsFilter, text: str) -> list[Span]:
    """What scan finds with every marker, assignment and URL search run on every text."""
    return scan_view(lambda folded: _every_secret_search_of(flt, folded), text)


def _every_secret_search_of(flt: SecretsFilter, text: str) -> list[Span]:
    found: list[Span] = []
    for token in flt._tokens:
        for marker in token.markers:
            secrets._find_token(token, marker, text, text.find(marker), found)
    if flt._keys:
        secrets._find_keys(text, text.find(secrets._BEGIN_LINE), found)
    if flt._passwords:
        flt._scan_assignments(text, fold_case(text), found)
        found += [
            Span("PASSWORD", *m.span("value"), secrets._PASSWORD_SCORE)
            for m in secrets._URL_PASSWORD.finditer(text)
        ]
    return resolve(found, secrets._RANK)


@pytest.mark.parametrize("flt", SECRETS, ids=lambda f: f.name)
def test_secret_gates_skip_only_what_finds_nothing(flt: SecretsFilter) -> None:
    """The character, lead and key-name tests in front of each search change no result."""
    for text in TEXTS:
        assert flt.scan(text) == _every_secret_search(flt, text), text


def _resolve_by_strength(candidates: list[Span], rank: dict[str, int]) -> list[Span]:
    """Overlap resolution without the shortcut for disjoint spans."""
    kept: list[Span] = []
    for span in sorted(
        candidates, key=lambda s: (s.start - s.end, -rank.get(s.entity, 0), s.start)
    ):
        if all(span.end <= k.start or span.start >= k.end for k in kept):
            kept.append(span)
    return sorted(kept, key=lambda s: s.start)


def test_resolve_keeps_disjoint_spans_as_the_long_way_does() -> None:
    """Disjoint candidates come back sorted; overlapping ones as ranked by strength."""
    rng = random.Random(3)
    rank = {"A": 2, "B": 1}
    for _ in range(3000):
        candidates = []
        for _ in range(rng.randrange(0, 5)):
            start = rng.randrange(0, 30)
            candidates.append(Span(rng.choice("ABC"), start, start + rng.randrange(1, 8)))
        assert resolve(candidates, rank) == _resolve_by_strength(candidates, rank), candidates


def test_the_pii_tail_search_from_the_trailing_runs_finds_what_the_window_does() -> None:
    """Starting the tail search where the characters' trailing runs start holds back the same."""
    rng = random.Random(11)
    texts = [text[:cut] for text in TEXTS for cut in {len(text), rng.randrange(len(text) + 1)}]
    for text in texts:
        fast = tail_holdback(
            regex_pii._TAIL,
            text,
            regex_pii._TAIL_WINDOW,
            regex_pii._TAIL_SPACED,
            regex_pii._TAIL_RUNS,
        )
        slow = tail_holdback(regex_pii._TAIL, text, regex_pii._TAIL_WINDOW, regex_pii._TAIL_SPACED)
        assert fast == slow, text
