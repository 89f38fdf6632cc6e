"""Checksums and number rules that turn a regex candidate into a finding.

Each function takes only the candidate's text, so a filter runs it on the few
candidates its regex found and never on the whole input.
"""

from __future__ import annotations

import ipaddress

# Payment card issuer prefixes (IIN ranges) with the lengths each brand issues.
# Ranges are inclusive and compared on the first len(str(lo)) digits.
_CARD_BRANDS: tuple[tuple[int, int, frozenset[int]], ...] = (
    (1, 1, frozenset({15})),  # UATP
    (4, 4, frozenset({13, 16, 19})),  # Visa
    (51, 55, frozenset({16})),  # Mastercard
    (2221, 2720, frozenset({16})),  # Mastercard 2-series
    (34, 34, frozenset({15})),  # American Express
    (37, 37, frozenset({15})),
    (300, 305, frozenset({14, 16, 17, 18, 19})),  # Diners Club
    (36, 36, frozenset({14, 16, 17, 18, 19})),
    (38, 39, frozenset({14, 16, 17, 18, 19})),
    (3528, 3589, frozenset({16, 17, 18, 19})),  # JCB
    (6011, 6011, frozenset({16, 17, 18, 19})),  # Discover
    (644, 649, frozenset({16, 17, 18, 19})),
    (65, 65, frozenset({16, 17, 18, 19})),
    (62, 62, frozenset({16, 17, 18, 19})),  # UnionPay
    (50, 50, frozenset({13, 14, 15, 16, 17, 18, 19})),  # Maestro
    (56, 58, frozenset({13, 14, 15, 16, 17, 18, 19})),
    (67, 67, frozenset({13, 14, 15, 16, 17, 18, 19})),
    (60, 60, frozenset({16, 19})),  # RuPay, Hipercard (606282)
    (81, 82, frozenset({16})),  # RuPay
    (2200, 2204, frozenset({16, 17, 18, 19})),  # Mir
)

# IBAN length per country (SWIFT IBAN registry).
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24,
    "DE": 22, "DJ": 27, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27,
    "GT": 28, "HN": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20,
    "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20,
    "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24,
    "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25,
    "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
    "YE": 30,
}  # fmt: skip

_DIGIT_VALUE = {chr(c): str(c - 55) for c in range(ord("A"), ord("Z") + 1)}


def luhn_ok(digits: str) -> bool:
    """True when a string of ASCII digits passes the Luhn checksum."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def card_ok(candidate: str) -> bool:
    """True for a plausible card number: issuer prefix, length, grouping and Luhn."""
    sep = " " if " " in candidate else "-" if "-" in candidate else ""
    if sep:
        if sep == " " and "-" in candidate:
            return False
        groups = candidate.split(sep)
        # 4-4-4-4(-3), 4-6-5 (Amex), 4-6-4 (Diners), 4-5-6 (UATP); the last
        # group may be short.
        if len(groups[0]) != 4 or any(len(g) not in (4, 5, 6) for g in groups[1:-1]):
            return False
        if not 1 <= len(groups[-1]) <= 6:
            return False
    digits = candidate.replace(sep, "") if sep else candidate
    if not _card_brand_ok(digits):
        return False
    return luhn_ok(digits)


def _card_brand_ok(digits: str) -> bool:
    n = len(digits)
    for lo, hi, lengths in _CARD_BRANDS:
        width = len(str(lo))
        if lo <= int(digits[:width]) <= hi and n in lengths:
            return True
    return False


def ssn_ok(area: str, group: str, serial: str) -> bool:
    """True unless the parts are ones the SSA never issues."""
    return area != "000" and area != "666" and area[0] != "9" and group != "00" and serial != "0000"


def iban_length(country: str) -> int | None:
    """The IBAN length of `country`, or None when it issues no IBANs."""
    return IBAN_LENGTHS.get(country)


def iban_ok(compact: str) -> bool:
    """True when an IBAN without spaces has its country's length and mod-97 == 1."""
    if IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(_DIGIT_VALUE.get(ch, ch) for ch in rearranged)
    return int(number) % 97 == 1


def ipv4_ok(candidate: str) -> bool:
    """True for a dotted quad with octets 0-255 and no leading zeros."""
    for octet in candidate.split("."):
        if len(octet) > 1 and octet[0] == "0":
            return False
        if int(octet) > 255:
            return False
    return True


def ipv6_ok(candidate: str) -> bool:
    """True for a valid IPv6 address that has a digit (so `cafe::beef`-like paths are not)."""
    if not any(ch.isdigit() for ch in candidate):
        return False
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True
