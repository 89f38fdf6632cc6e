"""Every built-in filter's work grows linearly with its text, hostile texts included.

Work is counted, not timed, over one `scan` and one `open_tail`:

- regex: the start positions each search tries (one per match or fullmatch),
  counted by wrapping every regex the filter modules compile;
- the text's own methods: the characters each `find`, `rfind`, `count`,
  `in` or slice looks at, counted by handing the filter a `str` subclass;
- Python: the lines run in the filter modules, counted by a trace function.

A regex attempt costs at most its pattern's longest match, which
`test_every_pattern_has_a_bounded_match` checks is finite, so counting
attempts bounds the engine's work. Each text is built from a unit repeated:
twice as many units must cost at most about twice the work.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any, SupportsIndex

import pytest

from gatewayd.config.schema import (
    InjectionFilterConfig,
    KeywordsFilterConfig,
    PiiFilterConfig,
    SecretsFilterConfig,
)
from gatewayd.guardrails.filters import regex_pii
from gatewayd.guardrails.types import InlineFilter

_FILTERS = Path(regex_pii.__file__).parent
_MAXREPEAT = re._constants.MAXREPEAT  # type: ignore[attr-defined]
# Patterns with an unbounded repeat (filter, attribute of its module or of
# the filter itself), and why the text they read is still bounded or read once.
_UNBOUNDED = {
    # A cluster is a run of one class that nothing follows: a match is the
    # whole run and the next search starts after it.
    ("pii", "_ANCHOR"),
    # Searched in the 40 and 12 characters before a candidate.
    ("pii", "_SSN_CONTEXT"),
    ("pii", "_VERSION_CONTEXT"),
    # Fullmatched on one assigned value, at most 256 characters.
    ("secrets", "_PLACEHOLDER"),
    ("secrets", "_CODE"),
    # Searched over the last _WINDOW characters.
    ("injection", "_CLAUSE_END"),
    # A rule's `\w+` reads the one word after its head's words, and a word
    # is reached only from the heads in the few words before it.
    ("injection", "_words"),
}


class _Work:
    """The work counted so far."""

    def __init__(self) -> None:
        self.units = 0


WORK = _Work()


class _CountedPattern:
    """A compiled regex that counts the start positions its searches try."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self._pattern = pattern
        self.pattern = pattern.pattern
        self.flags = pattern.flags

    def match(self, text: str, pos: int = 0, endpos: int = sys.maxsize) -> re.Match[str] | None:
        WORK.units += 1
        return self._pattern.match(text, pos, endpos)

    def fullmatch(self, text: str, pos: int = 0, endpos: int = sys.maxsize) -> re.Match[str] | None:
        WORK.units += 1
        return self._pattern.fullmatch(text, pos, endpos)

    def search(self, text: str, pos: int = 0, endpos: int = sys.maxsize) -> re.Match[str] | None:
        m = self._pattern.search(text, pos, endpos)
        WORK.units += (m.start() if m else min(endpos, len(text))) - pos + 1
        return m

    def finditer(
        self, text: str, pos: int = 0, endpos: int = sys.maxsize
    ) -> Iterator[re.Match[str]]:
        for m in self._pattern.finditer(text, pos, endpos):
            WORK.units += m.start() - pos + 1
            pos = max(m.end(), m.start() + 1)
            yield m
        WORK.units += max(0, min(endpos, len(text)) - pos) + 1


class _CountedText(str):
    """A text that counts the characters its searching methods look at."""

    def _looked(self, start: SupportsIndex | None, end: SupportsIndex | None) -> tuple[int, int]:
        lo, hi, _ = slice(start, end).indices(len(self))
        WORK.units += 1
        return lo, max(lo, hi)

    def find(
        self, sub: str, start: SupportsIndex | None = None, end: SupportsIndex | None = None
    ) -> int:
        lo, hi = self._looked(start, end)
        found = super().find(sub, lo, hi)
        WORK.units += (found + len(sub) if found >= 0 else hi) - lo
        return found

    def rfind(
        self, sub: str, start: SupportsIndex | None = None, end: SupportsIndex | None = None
    ) -> int:
        lo, hi = self._looked(start, end)
        found = super().rfind(sub, lo, hi)
        WORK.units += hi - (found if found >= 0 else lo)
        return found

    def count(
        self, sub: str, start: SupportsIndex | None = None, end: SupportsIndex | None = None
    ) -> int:
        lo, hi = self._looked(start, end)
        WORK.units += hi - lo
        return super().count(sub, lo, hi)

    def __contains__(self, sub: object) -> bool:
        assert isinstance(sub, str)
        return self.find(sub) >= 0

    def __getitem__(self, key: SupportsIndex | slice) -> str:
        if isinstance(key, slice):
            lo, hi = self._looked(key.start, key.stop)
            WORK.units += hi - lo
        else:
            WORK.units += 1
        return super().__getitem__(key)

    def lower(self) -> str:
        WORK.units += len(self)
        return super().lower()


MODULES: dict[str, ModuleType] = {}
_COMPILED: list[tuple[str, re.Pattern[str]]] = []
_COMPILE = re.compile


@contextmanager
def _counted_compiles(module: str) -> Iterator[None]:
    """Inside the block, re.compile gives a _CountedPattern, noted as `module`'s."""

    def compile_counted(pattern: str, flags: int = 0) -> _CountedPattern:
        compiled = _COMPILE(pattern, flags)
        _COMPILED.append((module, compiled))
        return _CountedPattern(compiled)

    re.compile = compile_counted  # type: ignore[assignment]
    try:
        yield
    finally:
        re.compile = _COMPILE


def _load_counted(name: str) -> ModuleType:
    """A fresh copy of a filter module whose regexes are all _CountedPattern."""
    spec = importlib.util.spec_from_file_location(f"counted_{name}", _FILTERS / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses looks the module up while the class is made.
    sys.modules[spec.name] = module
    with _counted_compiles(name):
        spec.loader.exec_module(module)
    MODULES[name] = module
    return module


def _build() -> dict[str, InlineFilter]:
    """The built-in filters, from counted copies of their modules."""
    pii, secrets, keywords, injection = map(
        _load_counted, ("regex_pii", "secrets", "keywords", "injection")
    )
    # Keywords and injection compile their regexes when built.
    with _counted_compiles("keywords"):
        phrases = ("forbidden", "top secret project", "a a a a a a a b")
        keywords_filter = keywords.KeywordsFilter(
            KeywordsFilterConfig(name="keywords", words=phrases)
        )
    with _counted_compiles("injection"):
        injection_filter = injection.InjectionFilter(InjectionFilterConfig(name="injection"))
    return {
        "pii": pii.PiiFilter(PiiFilterConfig(name="pii")),
        "secrets": secrets.SecretsFilter(SecretsFilterConfig(name="secrets")),
        "keywords": keywords_filter,
        "injection": injection_filter,
    }


FILTERS = _build()
_TRACED = {str(path) for path in _FILTERS.glob("*.py")}


def _tracer(frame: FrameType, event: str, arg: object) -> Callable[..., Any] | None:
    if frame.f_code.co_filename not in _TRACED:
        return None

    def lines(frame: FrameType, event: str, arg: object) -> Callable[..., Any]:
        if event == "line":
            WORK.units += 1
        return lines

    return lines


def work(flt: InlineFilter, text: str) -> int:
    """The work of one scan and one open_tail of `text`."""
    counted = _CountedText(text)
    WORK.units = 0
    previous = sys.gettrace()
    sys.settrace(_tracer)
    try:
        flt.scan(counted)
        open_tail = getattr(flt, "open_tail", None)
        if open_tail is not None:
            open_tail(counted)
    finally:
        sys.settrace(previous)
    return WORK.units


# Units that make hostile texts when repeated: each aims at a pattern's
# quantifiers, look-behinds, back-scans or per-candidate loops.
HOSTILE = {
    "emails-between-tabs": "a@b.cc\t",
    "emails-in-a-url-word": "x://a@b.cc\t",
    "at-signs": "@",
    "local-parts-and-ats": "a@",
    "domains-after-at": "a@b.c.d.e.f.g.h.",
    "digits": "9",
    "digits-and-spaces": "1 ",
    "digits-and-dashes": "1-",
    "digits-and-dots": "1.",
    "dotted-quads": "1.2.3.4.",
    "ipv4-in-emails": "1.2.3.4@b.cc ",
    "versions": "version 1.2.3.4 ",
    "phone-starts": "+1 (",
    "grouped-phones": "+44 20 7946 0958 1 ",
    "card-near-misses": "4111 1111 1111 111 ",
    "bare-ssns": "ssn 123456789 ",
    "iban-starts": "DE89 ",
    "capitals-and-digits": "AB12",
    "hex-colons": "1:",
    "double-colons": "1::",
    "equals": "=",
    "colons": ":",
    "quotes": '"',
    "assignments": "password=",
    "quoted-assignments": 'password="',
    "short-values": "password=abc ",
    "password-is": "password is ",
    "url-user-info": "://a:",
    "camel-case-names": "dbPassword=",
    "name-suffixes": "tokentokentoken",
    "xml-values": "<apiToken>a",
    "quoted-names-and-commas": '"api_token", ',
    "names-and-blanks": "password ",
    "comparisons": "token != ",
    "bare-semicolons": "password=a;b;c;",
    "slack-app-markers": "xapp-1-",
    "bearer-schemes": "Bearer ",
    "basic-credentials": "Basic dXNlcjpQYXNz ",
    "slack-webhooks": "hooks.slack.com/services/",
    "bedrock-markers": "ABSK",
    "unsigned-jwt-starts": "eyJhbGciOiJub25lIn0.eyJ",
    "base64": "QUJDRGVmZ2hpams0NTY3",
    "jwt-starts": "eyJ",
    "jwt-segments": " eyJaaaaaaaaaaaa.",
    "openai-markers": "sk-",
    "github-markers": "ghp_",
    "slack-markers": "xoxb-",
    "begin-lines": "-----BEGIN ",
    "private-key-headers": "-----BEGIN PRIVATE KEY-----",
    "end-lines": "-----END RSA PRIVATE KEY-----",
    "override-heads": "ignore all the ",
    "hashes": "#",
    "special-token-starts": "<|",
    "keyword-near-misses": "top secret ",
    "keyword-gaps": "a \t",
    "blanks": " \t\n",
    # Texts the normalised view folds: removals, one for one, and growth.
    "zero-width-digits": "1\u200b",
    "fullwidth-digits": "\uff11\u00a0",
    "ligatures": "\ufb01@",
    "emoji-digits": "\U0001f600 9",
}
# Repeats of the unit in the smaller text; the larger has twice as many.
_UNITS = 300


@pytest.mark.parametrize("unit", HOSTILE.values(), ids=HOSTILE.keys())
@pytest.mark.parametrize("name", FILTERS)
def test_twice_the_text_costs_at_most_about_twice_the_work(name: str, unit: str) -> None:
    """Scanning a hostile text twice as long does at most about twice the work."""
    flt = FILTERS[name]
    single = work(flt, unit * _UNITS)
    double = work(flt, unit * (2 * _UNITS))
    assert double <= 2.2 * single, (single, double)


def _named(filter_name: str, attribute: str) -> str:
    flt = FILTERS[filter_name]
    found = getattr(flt, attribute, None) or getattr(sys.modules[type(flt).__module__], attribute)
    assert isinstance(found, _CountedPattern)
    return found.pattern


def test_every_pattern_has_a_bounded_match() -> None:
    """Each regex the filters compile matches at most a bounded length, but the few noted."""
    unbounded = {_named(*name) for name in _UNBOUNDED}
    assert len(_COMPILED) > 30
    for module, compiled in _COMPILED:
        if compiled.pattern not in unbounded:
            widest = re._parser.parse(compiled.pattern, compiled.flags).getwidth()[1]  # type: ignore[attr-defined]
            assert widest < _MAXREPEAT, (module, compiled.pattern)
