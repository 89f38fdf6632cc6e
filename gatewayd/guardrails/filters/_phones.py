"""Phone numbers: a regex finds candidates, libphonenumber's metadata confirms them.

Numbering plans are too many and change too often to write down here: the
`phonenumbers` package carries Google's libphonenumber metadata (every
region's lengths, prefixes and number ranges). A `+CC` number is confirmed
for whatever region its country code belongs to; a national one (no `+`) is
confirmed when it is a valid number of one of the configured regions, so
`06 12 34 56 78` is a phone where France is listed and digits elsewhere.

Only candidates get there: digit runs with the grouping numbers are written
with, of a plausible length, whose digits fit a region's possible lengths
and match its general pattern (which every valid number of the region
matches: a microsecond). A candidate is then built the way libphonenumber
holds numbers and checked against the region's number ranges (5 to 15
microseconds); libphonenumber's parser, three times dearer, only reads the
prefixes it rewrites (carrier codes). Answers are cached per filter: chat
clients send the whole conversation again with every turn.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache, lru_cache

import phonenumbers
from phonenumbers import NumberParseException, PhoneMetadata, PhoneNumber

REGIONS = frozenset(phonenumbers.SUPPORTED_REGIONS)
"""Region codes phone_regions may name (ISO 3166 alpha-2, as libphonenumber knows them)."""

_SEPARATORS = b" .()+-"
# E.164 allows 15 digits; fewer than 8 is an extension, a count or a short code.
_INTL_DIGITS = range(8, 16)
_NATIONAL_DIGITS = range(8, 14)
# Shapes that are something else whatever a numbering plan allows: dates
# (2023-10-05, 05.10.2023), US SSNs (123-45-6789, 123.45.6789) and ZIP+4
# codes (94105-1234).
_NOT_A_PHONE = re.compile(
    r"(?:19|20)[0-9]{2}([.-])[01][0-9]\1[0-3][0-9]"
    r"|[0-3][0-9]([.-])[01][0-9]\2(?:19|20)?[0-9]{2}"
    r"|[0-9]{3}([.-])[0-9]{2}\3[0-9]{4}|[0-9]{5}-[0-9]{4}"
)


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a region's metadata says about numbers written in its national format."""

    region: str
    code: int
    # The trunk prefix ("0"), and whether it is usually left out (North America's 1).
    prefix: str
    optional: bool
    # What libphonenumber strips in front of a national number: the trunk
    # prefix, or a regex whose groups capture carrier codes or the part a
    # transform rule keeps.
    strip: re.Pattern[str] | None
    lengths: frozenset[int]
    # Every valid national number of the region matches it: a fullmatch here
    # costs a microsecond where validating costs ten.
    pattern: re.Pattern[str]


def _plan(region: str) -> _Plan:
    meta = PhoneMetadata.metadata_for_region(region)
    assert meta is not None
    desc = meta.general_desc
    assert desc is not None
    assert meta.country_code is not None
    strip = meta.national_prefix_for_parsing or meta.national_prefix
    return _Plan(
        region,
        meta.country_code,
        meta.national_prefix or "",
        meta.country_code == 1,
        re.compile(strip) if strip else None,
        frozenset(desc.possible_length or ()),
        re.compile(desc.national_number_pattern or ""),
    )


@cache
def _country_patterns(code: int) -> tuple[re.Pattern[str], ...]:
    """The general patterns of the regions sharing a country calling code."""
    regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(code, ())
    return tuple(_plan(r).pattern for r in regions if r != "001")


class PhoneRules:
    """The phone check for one pii filter: its regions, their lengths, one cache."""

    def __init__(self, regions: tuple[str, ...]) -> None:
        # Regions sharing a country code (US and CA) validate alike: one check does.
        by_code: dict[int, str] = {}
        for region in regions:
            by_code.setdefault(phonenumbers.country_code_for_region(region), region)
        self._regions = tuple(_plan(r) for r in by_code.values())
        self._by_code = by_code
        # Loading a country's metadata and compiling its patterns takes
        # milliseconds (+1: 25 regions): at config load for the configured
        # ones, not in a request.
        for code, region in by_code.items():
            _country_patterns(code)
            example = phonenumbers.example_number(region)
            if example is not None:
                phonenumbers.is_valid_number(example)
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
            return _international_ok(digits if international else digits[2:], self._by_code)
        if len(digits) not in _NATIONAL_DIGITS or _NOT_A_PHONE.fullmatch(candidate):
            return False
        return any(_national_ok(digits, plan) for plan in self._regions)


def _international_ok(number: str, likely: dict[int, str]) -> bool:
    """Whether E.164 digits (no +) are a valid number of their country.

    A country code of one of the configured regions is tried for that region
    first: checking the 25 regions of +1 one by one costs three times more.
    """
    if len(number) not in _INTL_DIGITS:
        return False
    for width in (1, 2, 3):
        code = int(number[:width])
        patterns = _country_patterns(code)
        if not patterns:
            continue
        # Country codes are prefix-free: this is the one. A trunk 0 may be
        # written after it, as in +33 (0)6 ...
        national = number[width:]
        for nsn in (national, national[1:]) if national[:1] == "0" else (national,):
            if not any(p.fullmatch(nsn) for p in patterns):
                continue
            candidate = _number(code, nsn)
            region = likely.get(code)
            if region is not None and phonenumbers.is_valid_number_for_region(candidate, region):
                return True
            if phonenumbers.is_valid_number(candidate):
                return True
        return False
    return False


def _national_ok(digits: str, plan: _Plan) -> bool:
    """Whether `digits` are a valid number of `plan`'s region as written there."""
    found = plan.strip.match(digits) if plan.strip is not None else None
    if found is not None and found.end() and found.lastindex:
        # A carrier code or a rewritten prefix: libphonenumber's parser knows how.
        return _parse(digits, plan.region)
    if found is not None and found.end():
        national = digits[found.end() :]
    elif plan.prefix and not plan.optional:
        # Written without its trunk prefix ("0"), a French or German
        # number is no national format: such digits are something else.
        return False
    else:
        national = digits
    if len(national) not in plan.lengths or not plan.pattern.fullmatch(national):
        return False
    number = _number(plan.code, national)
    if phonenumbers.is_valid_number_for_region(number, plan.region):
        return True
    # The other regions of a shared country code (Canada beside the US).
    return plan.optional and phonenumbers.is_valid_number(number)


def _number(code: int, national: str) -> PhoneNumber:
    """The number as libphonenumber holds it, leading zeros (Italy's 06) kept."""
    number = PhoneNumber(country_code=code, national_number=int(national))
    zeros = len(national) - len(national.lstrip("0"))
    if zeros and len(national) > 1:
        number.italian_leading_zero = True
        if zeros > 1:
            number.number_of_leading_zeros = zeros
    return number


def _parse(number: str, region: str) -> bool:
    """Whether libphonenumber's parser reads `number` as a valid number of `region`."""
    try:
        parsed = phonenumbers.parse(number, region)
    except NumberParseException:
        return False
    return phonenumbers.is_valid_number(parsed)
