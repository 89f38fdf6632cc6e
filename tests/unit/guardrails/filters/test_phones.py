"""Phone numbers: candidates confirmed by libphonenumber's metadata, national formats by region."""

from __future__ import annotations

import random

import phonenumbers
import pytest
from phonenumbers import PhoneNumberFormat, PhoneNumberType

from gatewayd.config.schema import PiiFilterConfig
from gatewayd.guardrails.filters._phones import (
    PhoneRules,
    _international_ok,
    _national_ok,
    _parse,
)
from gatewayd.guardrails.filters.regex_pii import PiiFilter

PII = PiiFilter(PiiFilterConfig(name="pii"))


def phones(text: str, flt: PiiFilter = PII) -> list[str]:
    """The phone numbers found in `text`, as written."""
    return [text[s.start : s.end] for s in flt.scan(text) if s.entity == "PHONE_NUMBER"]


@pytest.mark.parametrize(
    "number",
    [
        "+1 415-555-0134",
        "+1 (415) 555-2671",
        "+14155552671",
        "+91 98765 43210",
        "+49 151 23456789",
        "+44 20 7946 0958",
        "+33 6 12 34 56 78",
        "+33 (0)6 12 34 56 78",
        "+81 90-1234-5678",
        "+86 138 0013 8000",
        "+39 06 6982 1234",
        "0049 30 12345678",
        "(415) 555-2671",
        "415.555.2671",
        "1-800-555-0199",
        "020 7946 0958",
        "06 12 34 56 78",
        "030 12345678",
        "040 123 45 67",
        "089 123 45 678",
        "0171 1234567",
        "06-12345678",
        "612 34 56 78",
        "91 123 45 67",
        "090-1234-5678",
        "010-1234-5678",
        "0412 345 678",
    ],
)
def test_numbers_written_as_people_write_them_are_found(number: str) -> None:
    """+CC numbers with long groups and national formats of the default regions are phones."""
    assert phones(f"call {number} today") == [number]


@pytest.mark.parametrize(
    "text",
    [
        "released on 2023-10-05 at noon",
        "due 05.10.2023",
        "SSN 666-12-3456 is never issued",
        "zip 94105-1234",
        "count 100 200 300 400",
        "the sequence 1 2 3 4 5 6 7 8 9 10 11 12 13",
        "Windows 10.0.19045.2965 build",
        "INV-2023-000123 is overdue",
        "ext 555-1234 only",
        "IBAN DE89-3704-0044-0532-0130-01 (bad check digits)",
        "IBAN DE00 3704 0044 0532 0130 00",
        "number 5551234567890123",
        "account 0044 0532 0130 00 of the branch",
    ],
)
def test_digits_that_are_something_else_are_no_phones(text: str) -> None:
    """Dates, SSNs, ZIP codes, versions, counts and IBAN groups are not confirmed as phones."""
    assert phones(text) == []


def test_national_formats_count_only_for_the_configured_regions() -> None:
    """A French national number needs FR in phone_regions; written with +33 it needs nothing."""
    us_only = PiiFilter(PiiFilterConfig(name="us", phone_regions=("US",)))
    assert phones("call 06 12 34 56 78", us_only) == []
    assert phones("call +33 6 12 34 56 78", us_only) == ["+33 6 12 34 56 78"]
    assert phones("call (415) 555-2671", us_only) == ["(415) 555-2671"]
    assert phones("call 06 12 34 56 78", PII) == ["06 12 34 56 78"]
    none = PiiFilter(PiiFilterConfig(name="none", phone_regions=()))
    assert phones("call (415) 555-2671 or +1 415 555 2671", none) == ["+1 415 555 2671"]


def test_a_number_without_its_trunk_prefix_is_no_national_format() -> None:
    """Digits valid in France once a 0 is put in front are not a French number without it."""
    assert phones("ref 1 00 20 03 00") == []
    assert phones("ref 01 00 20 03 00") == ["01 00 20 03 00"]


def test_the_metadata_prefilter_keeps_every_regions_example_numbers() -> None:
    """Checking E.164 digits without parsing agrees with libphonenumber on every region."""
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in (PhoneNumberType.FIXED_LINE, PhoneNumberType.MOBILE):
            example = phonenumbers.example_number_for_type(region, kind)
            if example is None or not phonenumbers.is_valid_number(example):
                continue
            e164 = phonenumbers.format_number(example, PhoneNumberFormat.E164)
            # Fewer than 8 digits in all (Niue, Tokelau) is below what counts.
            if len(e164) > 8:
                assert _international_ok(e164[1:], {}), (region, e164)


def test_example_numbers_of_the_default_regions_are_found_as_written_there() -> None:
    """Each default region's own national format of its example numbers is a phone."""
    for region in PiiFilterConfig(name="x").phone_regions:
        for kind in (PhoneNumberType.FIXED_LINE, PhoneNumberType.MOBILE):
            example = phonenumbers.example_number_for_type(region, kind)
            assert example is not None
            national = phonenumbers.format_number(example, PhoneNumberFormat.NATIONAL)
            if any(ch.isspace() or ch in "-.)" for ch in national):
                assert phones(f"tel {national} ok") == [national], (region, national)


def test_checking_national_digits_without_parsing_agrees_with_the_parser() -> None:
    """For digits written with the trunk prefix, the shortcut and phonenumbers.parse agree."""
    rng = random.Random(9)
    rules = PhoneRules(PiiFilterConfig(name="x").phone_regions)
    for plan in rules._regions:
        samples = []
        for kind in (PhoneNumberType.FIXED_LINE, PhoneNumberType.MOBILE):
            example = phonenumbers.example_number_for_type(plan.region, kind)
            assert example is not None
            national = phonenumbers.format_number(example, PhoneNumberFormat.NATIONAL)
            samples.append("".join(ch for ch in national if ch.isdigit()))
        # Random digits after the example's first three: near the valid ranges.
        for _ in range(300):
            head = rng.choice(samples)[:3]
            samples.append(
                head + "".join(rng.choice("0123456789") for _ in range(rng.randrange(5, 9)))
            )
        for digits in samples:
            if plan.prefix and not plan.optional and not digits.startswith(plan.prefix):
                continue
            assert _national_ok(digits, plan) == _parse(digits, plan.region), (plan.region, digits)
