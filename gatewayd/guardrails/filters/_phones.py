"""Phone numbers: a regex finds candidates, libphonenumber's metadata confirms them.

Numbering plans are too many and change too often to write down here: the
`phonenumbers` package carries Google's libphonenumber metadata (every
region's lengths, prefixes and number ranges). A `+CC` number is confirmed
for whatever region its country code belongs to; a national one (no `+`) is
confirmed when it is a valid number of one of the configured regions, so
`06 12 34 56 78` is a phone where France is listed and digits elsewhere.

Parsing and validating cost 20 to 40 microseconds, so only candidates get
there: digit runs with the grouping numbers are written with, of a plausible
length, whose digits fit a region's possible lengths and match its general
pattern (which every valid number of the region matches: a microsecond).
Answers are cached per filter: chat clients send the whole conversation
again with every turn.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache, lru_cache

import phonenumbers
from phonenumbers import NumberParseException, PhoneMetadata, PhoneNumber, PhoneNumberFormat

REGIONS = frozenset(phonenumbers.SUPPORTED_REGIONS)
"""Region codes phone_regions may name (ISO 3166 alpha-2, as libphonenumber knows them)."""

_SEPARATORS = b" .()+-"
# E.164 allows 15 digits; fewer than 8 (7 for national) is an extension or a count.
_INTL_DIGITS = range(8, 16)
_NATIONAL_DIGITS = range(8, 14)
# Shapes that are something else whatever a numbering plan allows: dates
# (2023-10-05, 05.10.2023), US SSNs (123-45-6789) and ZIP+4 codes (94105-1234).
_NOT_A_PHONE = re.compile(
    r"(?:19|20)[0-9]{2}([.-])[01][0-9]\1[0-3][0-9]"
    r"|[0-3][0-9]([.-])[01][0-9]\2(?:19|20)?[0-9]{2}"
    r"|[0-9]{3}-[0-9]{2}-[0-9]{4}|[0-9]{5}-[0-9]{4}"
)
_FIRST_GROUP = re.compile(r"[0-9]+")


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a region's metadata says about numbers written in its national format."""

    region: str
    # The trunk prefix ("0"), and whether it is usually left out (North America's 1).
    prefix: str
    optional: bool
    lengths: frozenset[int]
    # Every valid national number of the region matches it: a fullmatch here
    # costs a microsecond where parsing costs tens.
    pattern: re.Pattern[str]


def _plan(region: str) -> _Plan:
    meta = PhoneMetadata.metadata_for_region(region)
    assert meta is not None
    desc = meta.general_desc
    assert desc is not None
    return _Plan(
        region,
        meta.national_prefix or "",
        meta.country_code == 1,
        frozenset(desc.possible_length or ()),
        re.compile(desc.national_number_pattern or ""),
    )


@cache
def _country_patterns(code: int) -> tuple[re.Pattern[str], ...]:
    """The general patterns of the regions sharing a country calling code."""
    regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(code, ())
    return tuple(_plan(r).pattern for r in regions if r != "001")


def _may_be_international(number: str) -> bool:
    """Whether some country code starts the E.164 digits and the rest may be its
    number (perhaps after a trunk 0 written in, as in +33 (0)6 ...)."""
    for width in (1, 2, 3):
        rest = width + (number[width : width + 1] == "0")
        for pattern in _country_patterns(int(number[:width])):
            if pattern.fullmatch(number, width) or pattern.fullmatch(number, rest):
                return True
    return False


class PhoneRules:
    """The phone check for one pii filter: its regions, their lengths, one cache."""

    def __init__(self, regions: tuple[str, ...]) -> None:
        # Regions sharing a country code (US and CA) validate alike: one parse does.
        by_code: dict[int, str] = {}
        for region in regions:
            by_code.setdefault(phonenumbers.country_code_for_region(region), region)
        self._regions = tuple(_plan(r) for r in by_code.values())
        self._valid = lru_cache(maxsize=4096)(self._check)

    def accept(self, text: str, m: re.Match[str]) -> int | None:
        """The candidate's end when it is a valid number, else None."""
        start = m.start()
        if start > 1 and text[start - 1] in " .-" and "0" <= text[start - 2] <= "9":
            # The tail of a longer run of digit groups (an account number,
            # an IBAN's groups), reached after the run as a whole was refused.
            return None
        return m.end() if self._valid(m.group(), m.lastgroup == "intl") else None

    def _check(self, candidate: str, international: bool) -> bool:
        digits = candidate.encode().translate(None, _SEPARATORS).decode()
        if international or digits.startswith("00"):
            # "00" is the international call prefix of most of the world.
            number = digits if international else digits[2:]
            return (
                len(number) in _INTL_DIGITS
                and _may_be_international(number)
                and _parse("+" + number, None) is not None
            )
        if len(digits) not in _NATIONAL_DIGITS or _NOT_A_PHONE.fullmatch(candidate):
            return False
        groups = _FIRST_GROUP.findall(candidate)
        for plan in self._regions:
            prefix = plan.prefix
            if prefix and digits.startswith(prefix):
                national = digits[len(prefix) :]
            elif prefix and not plan.optional:
                # Written without its trunk prefix ("0"), a French or German
                # number is no national format: such digits are something else.
                continue
            else:
                national = digits
            if len(national) not in plan.lengths or not plan.pattern.fullmatch(national):
                continue
            parsed = _parse(digits, plan.region)
            # Without a trunk prefix area codes are written many ways
            # (Madrid's 91 123 45 67 is formatted 911 23 45 67).
            if parsed is not None and (not prefix or _area_code_whole(groups, prefix, parsed)):
                return True
        return False


def _area_code_whole(groups: list[str], prefix: str, number: PhoneNumber) -> bool:
    """Whether the written first group holds the region's whole first group
    (an area code): `041-555-2671` splits Australia's 0415 and is a serial.
    Groups after it may be split any way (Germany's 040 123 45 67)."""
    formatted = phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL)
    expected = _FIRST_GROUP.search(formatted)
    first = groups[1] if len(groups) > 1 and groups[0] == prefix else groups[0]
    if expected is not None and expected.group() == prefix and first != prefix:
        # Formatted as "1 (800) ...": compare with the group after the prefix.
        expected = _FIRST_GROUP.search(formatted, expected.end())
    return expected is None or len(first) >= len(expected.group())


def _parse(number: str, region: str | None) -> PhoneNumber | None:
    """The valid number `number` is (read as `region`'s when it has no +), or None."""
    try:
        parsed = phonenumbers.parse(number, region)
    except NumberParseException:
        return None
    return parsed if phonenumbers.is_valid_number(parsed) else None
