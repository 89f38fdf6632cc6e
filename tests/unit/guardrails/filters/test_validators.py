"""Checksums and number rules behind the pii filter."""

from __future__ import annotations

import pytest

from gatewayd.guardrails.filters import _validators as v


@pytest.mark.parametrize(
    ("digits", "ok"),
    [("4111111111111111", True), ("79927398713", True), ("4111111111111112", False)],
)
def test_luhn(digits: str, ok: bool) -> None:
    """The Luhn check accepts valid numbers and rejects a changed last digit."""
    assert v.luhn_ok(digits) is ok


@pytest.mark.parametrize(
    ("candidate", "ok"),
    [
        ("4111 1111 1111 1111", True),
        ("3782 822463 10005", True),  # Amex 4-6-5
        ("4222222222222", True),  # 13-digit Visa
        ("4111-1111 1111-1111", False),  # mixed separators
        ("41 1111 1111 1111 11", False),  # grouping
        ("378282246310005" + "0", False),  # Amex has 15 digits
        ("9111111111111117", False),  # no issuer
    ],
)
def test_card_checks_issuer_length_grouping_and_luhn(candidate: str, ok: bool) -> None:
    """A card needs a known issuer prefix, a length that issuer uses, sane groups and Luhn."""
    assert v.card_ok(candidate) is ok


@pytest.mark.parametrize(
    ("parts", "ok"),
    [
        (("536", "22", "8147"), True),
        (("000", "22", "8147"), False),
        (("666", "22", "8147"), False),
        (("912", "22", "8147"), False),
        (("536", "00", "8147"), False),
        (("536", "22", "0000"), False),
    ],
)
def test_ssn_rules(parts: tuple[str, str, str], ok: bool) -> None:
    """Area 000, 666 and 900-999, group 00 and serial 0000 are never issued."""
    assert v.ssn_ok(*parts) is ok


@pytest.mark.parametrize(
    ("iban", "ok"),
    [
        ("GB82WEST12345698765432", True),
        ("GB82WEST12345698765433", False),  # mod 97
        ("GB82WEST1234569876543", False),  # length
        ("QQ82WEST12345698765432", False),  # no such country
    ],
)
def test_iban_checks_country_length_and_mod_97(iban: str, ok: bool) -> None:
    """An IBAN needs its country's length and a remainder of 1 modulo 97."""
    assert v.iban_ok(iban) is ok


@pytest.mark.parametrize(
    ("address", "ok"),
    [("192.0.2.1", True), ("0.0.0.0", True), ("256.0.0.1", False), ("192.0.2.01", False)],
)
def test_ipv4_octets(address: str, ok: bool) -> None:
    """Octets are 0-255 without leading zeros."""
    assert v.ipv4_ok(address) is ok


@pytest.mark.parametrize(
    ("address", "ok"),
    [("2001:db8::1", True), ("::1", True), ("dead::beef", False), ("1:2:3", False)],
)
def test_ipv6_needs_a_valid_address_with_a_digit(address: str, ok: bool) -> None:
    """IPv6 is validated by ipaddress; all-letter forms (code paths) are not addresses."""
    assert v.ipv6_ok(address) is ok
