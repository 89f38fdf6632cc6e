"""The pii filter: emails, phone numbers, cards, US SSNs, IBANs and IP addresses.

Each entity is one regex that finds candidates plus a check run only on them
(Luhn, mod-97, SSA rules, octet ranges, libphonenumber's metadata for phones:
see _phones). Scanning is driven by cheap anchors so a 1 KB text costs a few
microseconds: emails are looked for around each '@'; numbers only inside
"clusters" (runs of digits and separators) long enough to hold one; IPv6 only
when the text has "::" or six colons. Every
entity but an email has an ASCII digit, so a text without '@' and digits
costs a dozen single-character tests (each a memchr) and no regex at all.

Holdback works from one "tail" regex: the alternatives below match, at the
end of the text, anything that is or could grow into a match. Every match
has a bounded length, so the tail is searched only over the last
`_TAIL_WINDOW` characters.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from dataclasses import dataclass

from gatewayd.config.schema import OnError, PiiFilterConfig
from gatewayd.guardrails.filters import _validators as v
from gatewayd.guardrails.filters._linear import compile_linear
from gatewayd.guardrails.filters._normalise import scan_view, tail_view
from gatewayd.guardrails.filters._phones import PhoneRules
from gatewayd.guardrails.filters._spans import clear_of_findings, resolve, tail_holdback
from gatewayd.guardrails.types import Span

_A = re.ASCII

# Emails are found from their '@': the local part backwards, the domain forwards.
_LOCAL = string.ascii_letters + string.digits + "._%+-"
_NOT_LOCAL = re.compile(r"[^A-Za-z0-9._%+-]")
# A top-level domain is letters, or punycode for one that is not (xn--p1ai).
_DOMAIN = re.compile(
    r"(?:[A-Za-z0-9-]{1,63}\.){1,6}(?:[A-Za-z]{2,24}|xn--[A-Za-z0-9-]{1,59})(?![A-Za-z0-9-])", _A
)

# Where numeric findings can be: a run of digits and the separators numbers
# are written with, long enough for a phone number or an IPv4 address (every
# such finding lies inside one), or an IBAN's two check digits right after
# its country code. One character set first (plain ranges, not \d) lets sre
# skip ahead fast; it has no letters, so prose's capitals are no false starts.
# The check digits are tried first, so a run never swallows them: the
# anchors are those of starting at the country code, which an earlier
# anchor can never have consumed (a run holds no letter).
_ANCHOR = re.compile(r"[0-9(+](?:(?<=[A-Z][A-Z][0-9])[0-9]|[0-9 .()+-]{6,})")
_CHECK_DIGITS = 2
# Deleted from a cluster's bytes (it is ASCII) to count its digits:
# bytes.translate is a table lookup per byte, several times faster than
# str.translate.
_SEPARATOR_BYTES = b" .()+-"

# Phone candidates (see _phones, which confirms them). International: "+",
# a country code, then digit groups split by one separator, "(0)" or a
# parenthesised area code. National: an area code (perhaps in parentheses)
# and at least one more group. Both bounded; the digit counts are checked after.
PHONE = re.compile(
    r"(?<![\w+.-])(?:"
    r"(?P<intl>\+[1-9][0-9]{0,14}(?:[ .-]?\(0\))?(?:(?:[ .-]|[ .-]?\(|\)[ .-]?)[0-9]{1,12}){0,6})"
    r"|(?P<national>(?:1[ .-])?(?:\([0-9]{2,5}\)[ .-]?|[0-9]{2,6}[ .-])"
    r"(?:[0-9]{2,8}[ .-]){0,4}[0-9]{2,8})"
    r")(?![\w]|[.-][0-9])",
    _A,
)
CARD = re.compile(r"(?<![\w.,-])\d(?:[ -]?\d){12,18}(?![\w]|[.,-]\d)", _A)
SSN = re.compile(
    r"(?<![\w-])(?P<area>\d{3})(?P<sep>[-. ]?)(?P<group>\d{2})(?P=sep)(?P<serial>\d{4})"
    r"(?![\w]|-\d)",
    _A,
)
IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)", _A)
IBAN = re.compile(
    r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}"
    r"(?:(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,4})?|(?:-[A-Z0-9]{4}){2,7}(?:-[A-Z0-9]{1,4})?"
    r"|[A-Z0-9]{11,30})(?![A-Za-z0-9])",
    _A,
)
_NOT_IPV6 = re.compile(r"[^0-9A-Fa-f:.]")
IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}"
    r"(?:[0-9A-Fa-f]{1,4}|\d{1,3}(?:\.\d{1,3}){3})?(?![\w:]|\.\d)",
    _A,
)

# Words that make a bare nine-digit number (or one with spaces) an SSN.
_SSN_CONTEXT = re.compile(
    r"(?i)\b(?:ssn|ss\s?#|social\s+security(?:\s+(?:number|no))?)\b[^\n\d]{0,20}\Z"
)
_SSN_CONTEXT_WINDOW = 40
# A dotted quad right after these words is a version number.
_VERSION_CONTEXT = re.compile(r"(?i)(?:\bversion|\bver\.?|\brelease|\bbuild)\s*\Z")
_VERSION_CONTEXT_WINDOW = 12

_TAIL = re.compile(
    r"(?:"
    # an email's local part, or a local part and an unfinished domain
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}(?:@[A-Za-z0-9.-]{0,408})?"
    # phones, cards, SSNs, IPv4: a run of digits and their separators (none of
    # them starts right after a letter or digit)
    r"|(?<![A-Za-z0-9_])[\d(+][\d .()+-]{0,59}"
    r"|(?<![A-Za-z0-9])[A-Z](?:[A-Z](?:\d(?:\d(?:[ -]?[A-Z0-9]){0,30}[ -]?)?)?)?"
    r"|(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){0,8}(?:[0-9A-Fa-f]{1,4}|\d{1,3}(?:\.\d{0,3}){0,3})?"
    r")\Z",
    _A,
)
# The longest match of any alternative above: an email, 64 + 1 + 408; the
# longest that may hold a space: the digit run, which covers the longest
# grouped phone number the regex takes (56) and card (37).
_TAIL_WINDOW = 473
_TAIL_SPACED = 60
# The characters each alternative above is made of, in order.
_TAIL_RUNS = (
    _LOCAL + "@",
    string.digits + " .()+-",
    string.ascii_uppercase + string.digits + " -",
    string.hexdigits + ":.",
)
# Custom patterns are opaque: hold back the trailing run without whitespace.
_CUSTOM_TAIL = re.compile(r"\S{1,256}\Z")
_CUSTOM_WINDOW = 256

Accept = Callable[[str, re.Match[str]], int | None]
"""Checks a candidate; returns the end of the finding (it may trim), or None."""


def _accept_card(text: str, m: re.Match[str]) -> int | None:
    return m.end() if v.card_ok(m.group()) else None


def _accept_ssn(text: str, m: re.Match[str]) -> int | None:
    if not v.ssn_ok(m.group("area"), m.group("group"), m.group("serial")):
        return None
    if m.group("sep") == "-":
        return m.end()
    # Nine bare digits (or spaced, or dotted) are too often something else:
    # ask for words that say SSN.
    start = m.start()
    context = text[max(0, start - _SSN_CONTEXT_WINDOW) : start]
    return m.end() if _SSN_CONTEXT.search(context) else None


def _accept_ipv4(text: str, m: re.Match[str]) -> int | None:
    if not v.ipv4_ok(m.group()):
        return None
    start = m.start()
    context = text[max(0, start - _VERSION_CONTEXT_WINDOW) : start]
    return None if _VERSION_CONTEXT.search(context) else m.end()


def _accept_iban(text: str, m: re.Match[str]) -> int | None:
    candidate = m.group()
    length = v.iban_length(candidate[:2])
    if length is None:
        return None
    sep = candidate[4]
    if sep != " " and sep != "-":
        return m.end() if v.iban_ok(candidate) else None
    # Grouped: trailing groups may belong to the next words ("... 7034 PAID").
    count, end = 0, m.start() - 1
    for group in candidate.split(sep):
        count += len(group)
        end += len(group) + 1
        if count >= length:
            break
    compact = text[m.start() : end].replace(sep, "")
    return end if count == length and v.iban_ok(compact) else None


def _accept_ipv6(text: str, m: re.Match[str]) -> int | None:
    return m.end() if v.ipv6_ok(m.group()) else None


@dataclass(frozen=True, slots=True)
class _Numeric:
    """A numeric entity, tried inside clusters with at least `digits` digits."""

    entity: str
    pattern: re.Pattern[str]
    accept: Accept
    digits: int
    dots: int = 0


_NUMERIC = (
    _Numeric("CREDIT_CARD", CARD, _accept_card, 13),
    _Numeric("US_SSN", SSN, _accept_ssn, 9),
    _Numeric("IP_ADDRESS", IPV4, _accept_ipv4, 4, dots=3),
)
ENTITIES = frozenset(
    {"EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "US_SSN", "IBAN_CODE", "IP_ADDRESS"}
)
# Which finding wins when two of the same length overlap: the more specific.
_RANK = {
    "CREDIT_CARD": 6,
    "IBAN_CODE": 6,
    "US_SSN": 5,
    "EMAIL_ADDRESS": 5,
    "IP_ADDRESS": 4,
    "PHONE_NUMBER": 3,
}


def _has_digit(text: str) -> bool:
    """Whether `text` has an ASCII digit: ten memchr scans beat one regex pass."""
    return (
        "0" in text
        or "1" in text
        or "2" in text
        or "3" in text
        or "4" in text
        or "5" in text
        or "6" in text
        or "7" in text
        or "8" in text
        or "9" in text
    )


def _find(
    entity: str,
    pattern: re.Pattern[str],
    accept: Accept,
    text: str,
    out: list[Span],
    pos: int = 0,
    endpos: int | None = None,
) -> None:
    """Append the accepted matches of `pattern` in text[pos:endpos]."""
    endpos = len(text) if endpos is None else endpos
    while m := pattern.search(text, pos, endpos):
        end = accept(text, m)
        if end is None:
            # A rejected candidate may hide a valid one starting inside it.
            pos = m.start() + 1
        else:
            out.append(Span(entity, m.start(), end))
            pos = end


def _run_start(text: str, end: int, outside: re.Pattern[str], longest: int) -> int:
    """Where the run of characters not matching `outside` that ends at `end` starts,
    or -1 when it is longer than `longest`."""
    behind = text[max(0, end - longest - 1) : end][::-1]
    stop = outside.search(behind)
    run = stop.start() if stop else len(behind)
    return end - run if run <= longest else -1


class _UserInfo:
    """Tells whether a position is inside a URL's user info (https://user@host),
    which is no email: a "://" in the same word (since the last space or
    newline) before it.

    Positions are asked about in increasing order, so each call looks only at
    the text since the previous one: looking back to the word's start from
    every email made a text of emails between tabs cost its length squared.
    """

    __slots__ = ("_scheme", "_seen", "_text", "_word")

    def __init__(self, text: str) -> None:
        self._text = text
        self._seen = 0
        self._word = 0
        self._scheme = -1

    def holds(self, start: int) -> bool:
        """Whether `start` (not before the last one asked about) is in user info."""
        text, seen = self._text, self._seen
        if start > seen:
            blank = max(text.rfind(" ", seen, start), text.rfind("\n", seen, start))
            if blank >= 0:
                self._word = blank + 1
            # A "://" may straddle the part looked at before.
            scheme = text.rfind("://", max(0, seen - 2), start)
            if scheme >= 0:
                self._scheme = scheme
            self._seen = start
        return self._scheme >= self._word


def _find_emails(text: str, out: list[Span], urls: bool) -> None:
    """Append the emails in `text`; `urls` False says it has no URL to look at."""
    user_info = _UserInfo(text) if urls else None
    at = text.find("@")
    while at >= 0:
        # One character rules out most '@' that start no email ("@@", " @").
        if at and text[at - 1] in _LOCAL:
            start = _run_start(text, at, _NOT_LOCAL, 64)
            domain = _DOMAIN.match(text, at + 1) if 0 <= start < at else None
            if domain and not (user_info and user_info.holds(start)):
                out.append(Span("EMAIL_ADDRESS", start, domain.end()))
                at = domain.end()
        at = text.find("@", at + 1)


def _find_ipv6(text: str, out: list[Span]) -> None:
    if text.count(":") >= 6:
        # Perhaps a full address (eight groups, or six and an IPv4 tail): no "::" to start from.
        _find("IP_ADDRESS", IPV6, _accept_ipv6, text, out)
        return
    # Every other address has a "::"; its start is at most 39 characters back.
    pos = text.find("::")
    while pos >= 0:
        start = _run_start(text, pos, _NOT_IPV6, 39)
        m = IPV6.match(text, start) if start >= 0 else None
        if m and m.end() > pos and _accept_ipv6(text, m) is not None:
            out.append(Span("IP_ADDRESS", m.start(), m.end()))
            pos = m.end()
        pos = text.find("::", pos + 2)


class PiiFilter:
    """Finds personal data with regexes and checksums; no service, no I/O."""

    def __init__(self, config: PiiFilterConfig) -> None:
        self.name = config.name
        self.on_error: OnError | None = config.on_error
        unknown = set(config.entities) - ENTITIES
        if unknown:
            raise ValueError(f"unknown pii entities: {', '.join(sorted(unknown))}")
        wanted = frozenset(config.entities) or ENTITIES
        self._emails = "EMAIL_ADDRESS" in wanted
        self._ibans = "IBAN_CODE" in wanted
        self._ipv6 = "IP_ADDRESS" in wanted
        numeric = [n for n in _NUMERIC if n.entity in wanted]
        if "PHONE_NUMBER" in wanted:
            phones = PhoneRules(config.phone_regions)
            numeric.append(_Numeric("PHONE_NUMBER", PHONE, phones.accept, 7))
        self._numeric = tuple(numeric)
        self._anchors = bool(self._numeric) or self._ibans
        # Operators' patterns run on RE2: none of them can make a scan backtrack.
        self._custom = tuple((c.entity, compile_linear(c.pattern)) for c in config.custom)

    def scan(self, text: str) -> list[Span]:
        """Every finding in `text` (read as a model reads it: see _normalise), by start."""
        return scan_view(self._scan, text)

    def _scan(self, text: str) -> list[Span]:
        """Every finding in `text` as written, ordered by start, overlaps resolved."""
        found: list[Span] = []
        if self._emails and "@" in text:
            # User info follows "://": without a colon no '@' is in a URL's.
            _find_emails(text, found, ":" in text)
        if (self._anchors or self._ipv6) and _has_digit(text):
            if self._anchors:
                self._scan_anchors(text, found)
            # ipv6_ok wants a digit too.
            if self._ipv6 and ":" in text and ("::" in text or text.count(":") >= 6):
                _find_ipv6(text, found)
        for entity, pattern in self._custom:
            for m in pattern.finditer(text):
                if m.end() > m.start():
                    found.append(Span(entity, m.start(), m.end()))
        return resolve(found, _RANK)

    def _scan_anchors(self, text: str, found: list[Span]) -> None:
        limit = len(text)
        # Where the last IBAN's check digits end: the groups right after them
        # are an account number (valid or not), never a phone number.
        check_digits_end = -2
        for anchor in _ANCHOR.finditer(text):
            start, end = anchor.span()
            if end - start == _CHECK_DIGITS:
                check_digits_end = end
                start -= 2
                iban = IBAN.match(text, start) if self._ibans else None
                if iban and (stop := _accept_iban(text, iban)) is not None:
                    found.append(Span("IBAN_CODE", start, stop))
                continue
            chunk = anchor.group()
            digits = len(chunk.encode().translate(None, _SEPARATOR_BYTES))
            # Two characters past the cluster keep the look-aheads honest.
            stop = min(limit, end + 2)
            in_iban = start == check_digits_end + 1
            for n in self._numeric:
                if (
                    digits >= n.digits
                    and (not n.dots or chunk.count(".") >= n.dots)
                    and not (in_iban and n.pattern is PHONE)
                ):
                    _find(n.entity, n.pattern, n.accept, text, found, start, stop)

    def holdback(self, text: str) -> int:
        """The trailing characters that are, or could still grow into, a finding."""
        return clear_of_findings(text, self.open_tail(text), self.scan)

    def open_tail(self, text: str) -> int:
        """The trailing characters that could still grow into a finding (see holdback)."""
        return tail_view(self._open_tail, text)

    def _open_tail(self, text: str) -> int:
        """open_tail on `text` as written."""
        held = tail_holdback(_TAIL, text, _TAIL_WINDOW, _TAIL_SPACED, _TAIL_RUNS)
        if self._custom:
            held = max(held, tail_holdback(_CUSTOM_TAIL, text, _CUSTOM_WINDOW))
        return held
