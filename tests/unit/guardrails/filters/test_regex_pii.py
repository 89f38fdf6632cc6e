"""The pii filter: what it finds, what it leaves, offsets, options and holdback."""

from __future__ import annotations

from itertools import pairwise

import pytest

from gatewayd.config.schema import CustomPattern, PiiFilterConfig
from gatewayd.guardrails.filters import build_filter
from gatewayd.guardrails.filters.regex_pii import ENTITIES, PiiFilter
from gatewayd.guardrails.types import InlineFilter

PII = PiiFilter(PiiFilterConfig(name="pii"))


def found(text: str, flt: PiiFilter = PII) -> list[tuple[str, str]]:
    """(entity, matched text) for every span, in order."""
    return [(s.entity, text[s.start : s.end]) for s in flt.scan(text)]


def test_build_filter_makes_an_inline_filter_from_config() -> None:
    """The factory's pii filter has the config's name and on_error and the protocol's methods."""
    flt = build_filter(PiiFilterConfig(name="people", on_error="allow"))
    assert isinstance(flt, InlineFilter)
    assert (flt.name, flt.on_error) == ("people", "allow")


@pytest.mark.parametrize(
    ("text", "entity", "value"),
    [
        ("to jane.doe@example.com.", "EMAIL_ADDRESS", "jane.doe@example.com"),
        ("+44 20 7946 0958", "PHONE_NUMBER", "+44 20 7946 0958"),
        ("(415) 555-2671", "PHONE_NUMBER", "(415) 555-2671"),
        ("020 7946 0958", "PHONE_NUMBER", "020 7946 0958"),
        ("4111-1111-1111-1111", "CREDIT_CARD", "4111-1111-1111-1111"),
        ("ssn 536-22-8147", "US_SSN", "536-22-8147"),
        ("GB82 WEST 1234 5698 7654 32", "IBAN_CODE", "GB82 WEST 1234 5698 7654 32"),
        ("at 203.0.113.7:22", "IP_ADDRESS", "203.0.113.7"),
        ("at [2001:db8::7]:22", "IP_ADDRESS", "2001:db8::7"),
        ("to ivan@example.xn--p1ai now", "EMAIL_ADDRESS", "ivan@example.xn--p1ai"),
        ("uatp 1220 00000 000003", "CREDIT_CARD", "1220 00000 000003"),
        ("uatp 122000000000003", "CREDIT_CARD", "122000000000003"),
        ("hipercard 6062826786276634", "CREDIT_CARD", "6062826786276634"),
        ("mir 2200 1234 5678 9019", "CREDIT_CARD", "2200 1234 5678 9019"),
        ("tel +1-(800)-555-0199 x", "PHONE_NUMBER", "+1-(800)-555-0199"),
        ("pay DE89-3704-0044-0532-0130-00", "IBAN_CODE", "DE89-3704-0044-0532-0130-00"),
        ("SSN: 536.22.8147", "US_SSN", "536.22.8147"),
        ("v6 2001:db8:0:0:0:0:192.0.2.1 x", "IP_ADDRESS", "2001:db8:0:0:0:0:192.0.2.1"),
        ("mapped ::ffff:192.0.2.128 x", "IP_ADDRESS", "::ffff:192.0.2.128"),
    ],
)
def test_each_entity_is_found_with_its_exact_value(text: str, entity: str, value: str) -> None:
    """Every built-in entity type is found and its span covers exactly the value."""
    assert found(text) == [(entity, value)]


@pytest.mark.parametrize(
    "text",
    [
        "4111 1111 1111 1112",  # Luhn fails
        "9111 1111 1111 1117",  # no issuer starts with 9
        "4111 11 1111 1111 11",  # not grouped like a card
        "DE88 3704 0044 0532 0130 00",  # mod-97 fails
        "QQ89 3704 0044 0532 0130 00",  # no such country
        "666-12-3456 000-12-3456 900-12-3456 123-00-4567 123-45-0000",
        "order 536228147",  # nine digits, nothing says SSN
        "part 536.22.8147",  # dotted, nothing says SSN
        "version 1.2.3.4 and build 10.0.19045.2965 and 1.2.3.4.5",
        "256.1.1.1 and 01.2.3.4",
        "123-456-7890",  # area codes never start with 1
        "12:30:45, 00:1A:2B:3C:4D:5E, std::vector, cafe::beef",
        "user@localhost and https://user@example.com/",
    ],
)
def test_near_misses_are_not_findings(text: str) -> None:
    """Checksums, number rules and context turn look-alikes down."""
    assert found(text) == []


def test_an_at_sign_at_the_start_does_not_end_the_email_search() -> None:
    """A handle at position 0 is skipped and the address after it is still found."""
    assert found("@handle then bob@example.com") == [("EMAIL_ADDRESS", "bob@example.com")]


def test_bare_ssn_needs_words_that_say_so() -> None:
    """Nine digits (or spaced groups) count as an SSN only after "SSN" or "social security"."""
    assert found("SSN: 536228147") == [("US_SSN", "536228147")]
    assert found("social security number 536 22 8147") == [("US_SSN", "536 22 8147")]
    assert found("ticket 536 22 8147") == []


def test_offsets_are_code_points_next_to_other_scripts() -> None:
    """Findings glued to CJK text are found, with offsets counted in characters."""
    text = "邮箱bob@example.com电话415-555-2671"
    assert [(s.start, s.end) for s in PII.scan(text)] == [(2, 17), (19, 31)]


def test_iban_trailing_words_are_trimmed_to_the_country_length() -> None:
    """Groups after a complete IBAN ("PAID") are not part of it."""
    assert found("BE68 5390 0754 7034 PAID") == [("IBAN_CODE", "BE68 5390 0754 7034")]


def test_a_rejected_candidate_does_not_hide_a_card_inside_it() -> None:
    """After a digit run fails its checks, the scan resumes inside it."""
    assert found("ref 1234 4111 1111 1111 1111") == [("CREDIT_CARD", "4111 1111 1111 1111")]


def test_spans_are_ordered_and_disjoint() -> None:
    """Several entities in one text come back sorted by start, never overlapping."""
    text = "jane@example.com 415-555-0100 4111111111111111 192.0.2.5 DE89370400440532013000"
    spans = PII.scan(text)
    assert [s.entity for s in spans] == [
        "EMAIL_ADDRESS",
        "PHONE_NUMBER",
        "CREDIT_CARD",
        "IP_ADDRESS",
        "IBAN_CODE",
    ]
    assert all(a.end <= b.start for a, b in pairwise(spans))


def test_entities_selects_a_subset() -> None:
    """Only the configured entity types are reported."""
    only_email = PiiFilter(PiiFilterConfig(name="p", entities=("EMAIL_ADDRESS",)))
    assert found("bob@example.com 415-555-0100", only_email) == [
        ("EMAIL_ADDRESS", "bob@example.com")
    ]


def test_unknown_entities_are_refused() -> None:
    """A typo in `entities` fails at load, naming the entity, not silently finding nothing."""
    with pytest.raises(ValueError, match="EMAIL_ADRESS"):
        PiiFilter(PiiFilterConfig(name="p", entities=("EMAIL_ADRESS",)))
    assert "EMAIL_ADDRESS" in ENTITIES


def test_custom_patterns_add_entities() -> None:
    """A custom regex reports its own entity next to the built-in ones."""
    flt = PiiFilter(
        PiiFilterConfig(name="p", custom=(CustomPattern("EMPLOYEE_ID", r"\bEMP-\d{6}\b"),))
    )
    assert found("EMP-123456 mailed bob@example.com", flt) == [
        ("EMPLOYEE_ID", "EMP-123456"),
        ("EMAIL_ADDRESS", "bob@example.com"),
    ]


def test_custom_patterns_run_on_re2_so_nested_repeats_cannot_backtrack() -> None:
    """A pattern that backtracks exponentially in Python's re returns at once on RE2."""
    flt = PiiFilter(PiiFilterConfig(name="p", custom=(CustomPattern("RUNAWAY", r"(a+)+$"),)))
    assert type(flt._custom[0][1]).__module__.startswith("re2")
    # Python's re would try about 2**60 ways to split the a's before giving up.
    assert found("a" * 60 + "!", flt) == []
    assert found("x aaaa", flt) == [("RUNAWAY", "aaaa")]


@pytest.mark.parametrize(
    ("text", "held"),
    [
        ("my mail is bob@exa", "bob@exa"),
        ("card 4111 1111", "4111 1111"),
        ("call (415) 555-", "(415) 555-"),
        ("iban DE89 3704 ", "DE89 3704 "),
        ("host 2001:db8:", "2001:db8:"),
        ("hello world ", ""),
        ("it costs 5 dollars. ", ""),
    ],
)
def test_holdback_holds_only_what_could_still_match(text: str, held: str) -> None:
    """The held tail is exactly the part that could still become a finding."""
    assert PII.holdback(text) == len(held)
