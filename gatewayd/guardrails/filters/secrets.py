"""The secrets filter: API keys, tokens, private keys and assigned passwords.

Most secrets start with a fixed marker ("AKIA", "ghp_", "sk-", "eyJ"...): a
substring test on the marker decides whether the entity's regex runs at all,
so a text without any marker costs a few substring searches. Passwords are
found from an assignment to a name holding a key word (`password = "..."`,
`dbPassword: ...`, `setProperty("API_TOKEN", "...")`, `<apiToken>...`,
`my password is ...`) or a URL's user info (`postgres://app:...@db`), and
the finding covers the value only.
"""

from __future__ import annotations

import base64
import re
import string
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass

from gatewayd.config.schema import OnError, SecretsFilterConfig
from gatewayd.guardrails.filters._normalise import scan_view, tail_view
from gatewayd.guardrails.filters._phrases import prefix_pattern, trie_pattern
from gatewayd.guardrails.filters._spans import (
    clear_of_findings,
    fold_case,
    resolve,
    tail_holdback,
)
from gatewayd.guardrails.types import Span

Accept = Callable[[re.Match[str]], bool]


def _always(m: re.Match[str]) -> bool:
    return True


def _looks_random(m: re.Match[str]) -> bool:
    """Generated keys mix digits, upper and lower case; words in prose do not."""
    body = m.group("body")
    return (
        any(c.isdigit() for c in body)
        and any(c.isupper() for c in body)
        and any(c.islower() for c in body)
    )


def _has_digit(m: re.Match[str]) -> bool:
    return any(c.isdigit() for c in m.group("body"))


def _basic_ok(m: re.Match[str]) -> bool:
    """HTTP Basic credentials: base64 of printable `user:password`."""
    try:
        decoded = base64.b64decode(m.group("body"), validate=True)
    except ValueError:
        return False
    return b":" in decoded and decoded.isascii() and decoded.decode().isprintable()


def _token_like(m: re.Match[str]) -> bool:
    """Digits and letters both: `Bearer 3f9a...`, not `Basic authentication`."""
    body = m.group("body")
    return any(c.isdigit() for c in body) and any(c.isalpha() for c in body)


def _webhook_ok(m: re.Match[str]) -> bool:
    """A webhook URL's secret part is not the documentation's XXXX... placeholder."""
    secret = m.group("body").rsplit("/", 1)[-1]
    return len(set(secret)) > 1


_ALG_NONE = re.compile(r'"alg"\s{0,8}:\s{0,8}"none"', re.IGNORECASE)


def _jwt_ok(m: re.Match[str]) -> bool:
    """A signed token, or an unsigned one whose header says so (a signed token
    cut before its signature is a fragment, not a credential)."""
    token = m.group()
    if not token.endswith("."):
        return True
    header = token[: token.index(".")]
    try:
        decoded = base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))
    except ValueError:
        return False
    return _ALG_NONE.search(decoded.decode("utf-8", "replace")) is not None


@dataclass(frozen=True, slots=True)
class _Token:
    """A secret that starts with a fixed marker: its regex is tried only where
    `str.find` sees a marker, never run over the whole text.

    `gate` is one character every marker has: testing for a single character
    is about ten times cheaper than for a string, so it goes first. `lead`,
    when several markers start alike, is looked for once before them.
    `value`, when set, names the group the finding covers (the credential
    after a marker that is not part of it).
    """

    entity: str
    gate: str
    markers: tuple[str, ...]
    pattern: re.Pattern[str]
    accept: Accept = _always
    score: float = 1.0
    lead: str = ""
    value: str = ""


_TOKENS = (
    _Token(
        "AWS_ACCESS_KEY",
        "A",
        # Users' keys, temporary ones, and the rarer role and account prefixes.
        ("AKIA", "ASIA", "ABIA", "ACCA"),
        re.compile(r"(?<![A-Za-z0-9])(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Za-z0-9])"),
    ),
    # Bedrock API keys: long-term ones are "ABSK" and base64, short-term ones
    # a presigned URL in base64 after "bedrock-api-key-".
    _Token(
        "AWS_BEDROCK_API_KEY",
        "K",
        ("ABSK",),
        re.compile(r"(?<![A-Za-z0-9+/])ABSK[A-Za-z0-9+/]{60,400}={0,2}(?![A-Za-z0-9+/=])"),
    ),
    _Token(
        "AWS_BEDROCK_API_KEY",
        "-",
        ("bedrock-api-key-",),
        re.compile(
            r"(?<![A-Za-z0-9+/-])bedrock-api-key-[A-Za-z0-9+/]{40,3000}={0,2}(?![A-Za-z0-9+/=])"
        ),
    ),
    _Token(
        "GITHUB_TOKEN",
        "_",
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
        re.compile(
            r"(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{22,242})"
            r"(?![A-Za-z0-9_])"
        ),
    ),
    _Token(
        "ANTHROPIC_API_KEY",
        "-",
        ("sk-ant-",),
        re.compile(
            r"(?<![A-Za-z0-9_-])sk-ant-[a-z]{2,8}[0-9]{0,3}-[A-Za-z0-9_-]{32,200}(?![A-Za-z0-9_-])"
        ),
    ),
    _Token(
        "OPENAI_API_KEY",
        "-",
        ("sk-",),
        # "sk-ant-" is Anthropic's; the look-ahead keeps the two apart.
        re.compile(
            r"(?<![A-Za-z0-9_-])sk-(?!ant-)(?:proj-|svcacct-|admin-)?"
            r"(?P<body>[A-Za-z0-9_-]{20,256})(?![A-Za-z0-9_-])"
        ),
        _looks_random,
    ),
    _Token(
        "SLACK_TOKEN",
        "-",
        # Bot, user, refresh and configuration (xoxe-) tokens.
        ("xoxb-", "xoxa-", "xoxp-", "xoxr-", "xoxs-", "xoxe-", "xoxe."),
        re.compile(
            r"(?<![A-Za-z0-9_-])(?:xox[baprse]-|xoxe\.xox[bp]-)"
            r"(?P<body>[A-Za-z0-9-]{10,250})(?![A-Za-z0-9_-])"
        ),
        _has_digit,
        lead="xox",
    ),
    _Token(
        "SLACK_TOKEN",
        "-",
        # App-level tokens: xapp-1-A0123-1234-abc...
        ("xapp-",),
        re.compile(r"(?<![A-Za-z0-9_-])xapp-(?P<body>[A-Za-z0-9-]{10,250})(?![A-Za-z0-9_-])"),
        _has_digit,
    ),
    _Token(
        "SLACK_WEBHOOK_URL",
        "/",
        ("hooks.slack.com/",),
        re.compile(
            r"hooks\.slack\.com/(?:services|workflows|triggers)/"
            r"(?P<body>[A-Za-z0-9_-]{8,40}/[A-Za-z0-9_/-]{8,120})(?![A-Za-z0-9_/-])"
        ),
        _webhook_ok,
    ),
    _Token(
        "STRIPE_KEY",
        "_",
        ("sk_live_", "sk_test_", "rk_live_", "rk_test_"),
        re.compile(r"(?<![A-Za-z0-9_])[sr]k_(?:live|test)_[A-Za-z0-9]{16,247}(?![A-Za-z0-9_])"),
    ),
    _Token(
        "GOOGLE_API_KEY",
        "A",
        ("AIza",),
        re.compile(r"(?<![A-Za-z0-9_-])AIza[A-Za-z0-9_-]{35}(?![A-Za-z0-9_-])"),
    ),
    # Authorization headers in pasted curl commands and logs: the credential
    # after the scheme. PASSWORD ranks lowest, so a known token inside wins.
    _Token(
        "PASSWORD",
        " ",
        ("Bearer ", "bearer ", "BEARER "),
        re.compile(
            r"(?:Bearer|bearer|BEARER)[ \t]{1,8}(?P<body>[A-Za-z0-9._~+/-]{16,2048}={0,2})"
            r"(?![A-Za-z0-9._~+/=-])"
        ),
        _token_like,
        score=0.8,
        lead="earer",
        value="body",
    ),
    _Token(
        "PASSWORD",
        " ",
        ("Basic ", "basic ", "BASIC "),
        re.compile(
            r"(?:Basic|basic|BASIC)[ \t]{1,8}(?P<body>[A-Za-z0-9+/]{12,1024}={0,2})"
            r"(?![A-Za-z0-9+/=])"
        ),
        _basic_ok,
        score=0.8,
        lead="asic",
        value="body",
    ),
    _Token(
        "JWT",
        "J",
        ("eyJ",),
        # Signed (three parts), or unsigned ("alg": "none": a JSON payload and
        # an empty signature after the last dot).
        re.compile(
            r"(?<![A-Za-z0-9_.-])eyJ[A-Za-z0-9_-]{10,2000}\.(?:[A-Za-z0-9_-]{10,6000}"
            r"\.[A-Za-z0-9_-]{16,1000}|eyJ[A-Za-z0-9_-]{7,6000}\.)(?![A-Za-z0-9_-]|\.[A-Za-z0-9_-])"
        ),
        _jwt_ok,
    ),
)

# Assignments whose value is a secret, after gitleaks' generic rule and
# detect-secrets' keyword plugin: a key name anywhere in an identifier
# (`dbPassword`, `clientSecret`, `AWS_SECRET_ACCESS_KEY`, `mySecretString`),
# then an operator of any common language or format, then a value that looks
# like a credential (see _value_ok). Written in lower case: they run on
# lower-cased text (see fold_case).
_KEY_NAMES = (
    "pass", "password", "passwd", "passphrase", "pwd", "keypass", "secret", "token", "credential",
    "creds", "api_key", "api-key", "apikey", "app_key", "appkey", "auth_key", "authkey",
    "client_key", "access_key", "access-key", "private_key", "private-key", "privkey",
    "priv_key", "contrasena", "contraseña", "api key",
)  # fmt: skip
# What must follow a name before the rest of the identifier: `db_pass` and
# `auth_pass` are names, `passport` and `passenger` are not.
_AFTER_NAME = dict.fromkeys(_KEY_NAMES, "") | {"pass": "(?![a-z])"}
_NAMES = trie_pattern(_KEY_NAMES, _AFTER_NAME)
# The rest of the identifier: `_value`, `string`, `s`.
_SUFFIX = r"[a-z0-9_-]{0,24}"


def _has_key_marker(lowered: str) -> bool:
    """Whether a lower-cased text may hold a key name: each has one of these pieces."""
    # An or-chain rather than any() over a generator: most texts get here.
    return (
        "pass" in lowered
        or "pwd" in lowered
        or "secret" in lowered
        or "token" in lowered
        or "key" in lowered
        or "cred" in lowered
    )


# Between name and value: an operator (assignment in shells, Makefiles, YAML,
# JSON, Python, Go, Ruby; a comparison in code), or "is"/"was" ("my password is ...").
_OPERATOR = r"(?:::=|:=|\?=|!==|===|!=|==|=>|=|:|[ \t](?:is|was)(?:[ \t]{0,8}:)?)"
# What else may stand between a name and a quoted value: `setProperty("API_TOKEN", "...")`,
# `getenv_or_default("api_token", "...")` (a comma after the quoted name), or
# only blanks (`password "...";` in nginx or Terraform-like configs); and
# `<apiToken>...</apiToken>`.
_BETWEEN = (
    rf"(?:[\"'\]]{{0,2}}[ \t]{{0,8}}{_OPERATOR}[ \t]{{0,8}}"
    r"|[\"'][ \t]{0,8},[ \t]{0,8}(?P<comma>)(?=[\"'])|[ \t]{1,8}(?P<blank>)(?=[\"'])"
    r"|>(?=[^<\s]{1,256}</))"
)
# A bare value ends at a blank, a quote, a comma or a tag; a semicolon
# inside it (`p@ss;w0rd!`) is part of it.
_VALUE = (
    r"(?:\"(?P<dq>[^\"\n]{1,256})\"|'(?P<sq>[^'\n]{1,256})'"
    r"|(?P<bare>[^\s\"',;<]{1,256}(?:;[^\s\"',;<]{1,64})?))"
)
_ASSIGNMENT = re.compile(_NAMES + _SUFFIX + _BETWEEN + _VALUE)
# Credentials in a URL's user info: scheme://user:password@host.
# The user may be empty (`redis://:password@host`).
_URL_PASSWORD = re.compile(r"://[^\s/:@]{0,64}:(?P<value>[^\s/@\"';]{1,128})@")
# Sentence punctuation after a bare value; "!" and "?" are common in passwords.
_TRAILING_PUNCTUATION = ".,;:)]}>"
# Values that stand for a secret rather than being one.
_PLACEHOLDER = re.compile(
    r"\$\{.*\}|\$[a-z_][a-z0-9_]*|\{\{.*\}\}|<.*>|%\(?[a-z_]*\)?s?|(.)\1*"
    r"|none|null|nil|true|false|undefined|required|optional|string|str|bytes|text"
    r"|password|secret|token|changeme|redacted|hidden|example|your[_-].*"
    # A YAML tag: Ansible's `password: !vault |` holds the value on the next lines.
    r"|![a-z_]+",
)
# A bare value that is code, not a literal: `self.password`, `getpass()`, `cfg["pw"]`.
_CODE = re.compile(r"[a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)+|.*[(\[].*")
_PASSWORD_SCORE = 0.8

# Holdback: a marker, part of one, or a marker and the token body so far.
_TOKEN_MARKERS = sorted({m for t in _TOKENS for m in t.markers})
_TAIL = re.compile(
    r"(?<![A-Za-z0-9])(?:"
    + "|".join(re.escape(m) for m in _TOKEN_MARKERS)
    + r")[A-Za-z0-9_./+=-]{0,9010}\Z"
    + r"|(?<![A-Za-z0-9])(?:"
    + prefix_pattern(_TOKEN_MARKERS)
    + r")\Z"
)
# A JWT is the longest token: 3 + 2000 + 1 + 6000 + 1 + 1000 characters.
_TAIL_WINDOW = 9010
# What the tail is made of: tried only inside the text's trailing run of
# these, as from each marker in a window of markers the rest of the window
# was read again (9,000 characters of "sk-" and a "!" took 190 ms a call).
_TAIL_RUN = (string.ascii_letters + string.digits + "_./+=-",)
# An Authorization header's credential still arriving, blanks after the
# scheme included ("Bearer  3f9a..."); the markers' own tail above holds a
# scheme still being typed.
_SCHEME_TAIL = re.compile(
    r"(?:Bearer|bearer|BEARER|Basic|basic|BASIC)[ \t]{1,8}[A-Za-z0-9._~+/-]{0,2048}={0,2}\Z"
)
_SCHEME_WINDOW = 6 + 8 + 2048 + 2
# URL user info still arriving: "://user:pa", or the "://" itself.
_URL_TAIL = re.compile(r":(?:/(?:/[^\s/:@]{0,64}(?::[^\s/@]{0,128})?)?)?\Z")
_URL_TAIL_WINDOW = 196
_OPEN_VALUE = r"(?:\"[^\"\n]{0,256}|'[^'\n]{0,256}|[^\s\"',;<]{0,256}(?:;[^\s\"',;<]{0,64})?)"
_ASSIGNMENT_TAIL = re.compile(
    r"(?:"
    + prefix_pattern(_KEY_NAMES)
    + r"|(?:"
    + _NAMES
    + rf"){_SUFFIX}(?:[\"'\]]{{0,2}}[ \t]{{0,8}}(?:{_OPERATOR}[ \t]{{0,8}}{_OPEN_VALUE}"
    + r"|[!:?=]{1,2}|,[ \t]{0,8}(?:[\"'][^\"'\n]{0,256})?|[ \t](?:i|wa?))?"
    + r"|[ \t]{1,8}(?:[\"'][^\"'\n]{0,256})?|>[^<\s]{0,256}<?)?)\Z",
    re.IGNORECASE,
)
# Key name (11) + suffix (24) + quote and bracket + blanks, operator, blanks
# (8 + 21 + 8) + a quote and the longest value (a bare one: 256 + 1 + 64).
_ASSIGNMENT_WINDOW = 400
# A private key is the whole block from its BEGIN line through the END line
# of the same kind that follows within _KEY_BODY characters; a block cut short
# (no END) still counts: its BEGIN line and the base64 lines after it.
_BEGIN = "-----BEGIN"
_BEGIN_LINE = _BEGIN + " "
_END_LINE = "-----END "
_KEY_BODY = 16000
_KEY_LINES = re.compile(r"(?:\r?\n[A-Za-z0-9+/=]{16,100}){0,150}")
_BEGIN_TAIL = re.compile(r"(?:" + prefix_pattern([_BEGIN]) + r")\Z")
# A header still arriving (up to the end of the text), or a whole one.
_KEY_PARTIAL = re.compile(
    r"-----BEGIN(?: [A-Z0-9 ]{0,40}(?:"
    + prefix_pattern(["PRIVATE KEY-----", "PRIVATE KEY BLOCK-----"])
    + r")?)?\Z"
)
_KEY_HEADER = re.compile(r"-----BEGIN (?P<kind>[A-Z0-9 ]{0,40})PRIVATE KEY(?: BLOCK)?-----")
_KEY_END = re.compile(r"-----END (?P<kind>[A-Z0-9 ]{0,40})PRIVATE KEY(?: BLOCK)?-----")
# The longest block: header (72) + body + END line (72).
_KEY_WINDOW = 72 + _KEY_BODY + 72

ENTITIES = frozenset({t.entity for t in _TOKENS} | {"PRIVATE_KEY", "PASSWORD"})
# Which finding wins when two of the same length overlap: the more specific.
_RANK = {entity: 2 for entity in ENTITIES} | {"PASSWORD": 1}


def _value_ok(raw: str, value: str, quoted: bool) -> bool:
    """Whether an assigned value looks like a credential, not prose, code or a
    placeholder; `raw` is the lower-cased value before trailing punctuation
    was cut off, `value` after."""
    if _PLACEHOLDER.fullmatch(raw) or _PLACEHOLDER.fullmatch(value):
        return False
    symbolic = any(c.isdigit() or not (c.isalpha() or c in "_.") for c in value)
    if quoted:
        return len(value) >= 8 or (symbolic and len(value) >= 4)
    # Bare digits are counts and limits (`max_tokens=100000`), not credentials.
    return len(value) >= 6 and symbolic and not value.isdigit() and not _CODE.fullmatch(value)


def _find_keys(text: str, at: int, out: list[Span]) -> None:
    """Append the private key blocks in `text`, the first BEGIN line at `at`.

    One regex for the whole block searched up to _KEY_BODY characters ahead of
    every BEGIN line for its END line, so a text of BEGIN lines cost that much
    per line; the END lines are found once here, and each BEGIN line looks its
    own up.
    """
    ends: dict[str, list[tuple[int, int]]] | None = None
    while at >= 0:
        header = _KEY_HEADER.match(text, at)
        if header is None:
            at = text.find(_BEGIN_LINE, at + 1)
            continue
        if ends is None:
            ends = _key_ends(text)
        body = header.end()
        same_kind = ends.get(header.group("kind"), [])
        i = bisect_left(same_kind, (body,))
        if i < len(same_kind) and same_kind[i][0] <= body + _KEY_BODY:
            stop = same_kind[i][1]
        else:
            # It matches no lines at worst, never fails.
            lines = _KEY_LINES.match(text, body)
            stop = lines.end() if lines else body
        out.append(Span("PRIVATE_KEY", at, stop))
        at = text.find(_BEGIN_LINE, stop)


def _key_ends(text: str) -> dict[str, list[tuple[int, int]]]:
    """Each kind's END lines in `text`, as (start, end) in order."""
    ends: dict[str, list[tuple[int, int]]] = {}
    at = text.find(_END_LINE)
    while at >= 0:
        # Looked for at every "-----END ": an END line may begin in the
        # dashes that end the one before it.
        if m := _KEY_END.match(text, at):
            ends.setdefault(m.group("kind"), []).append(m.span())
        at = text.find(_END_LINE, at + 1)
    return ends


def _find_token(token: _Token, marker: str, text: str, at: int, out: list[Span]) -> None:
    """Append the token's matches at `marker`, the first of which is at `at`."""
    while at >= 0:
        m = token.pattern.match(text, at)
        if m and token.accept(m):
            start, end = m.span(token.value) if token.value else (at, m.end())
            out.append(Span(token.entity, start, end, token.score))
            at = text.find(marker, m.end())
        else:
            at = text.find(marker, at + 1)


class SecretsFilter:
    """Finds credentials by their published formats; no service, no I/O."""

    def __init__(self, config: SecretsFilterConfig) -> None:
        self.name = config.name
        self.on_error: OnError | None = config.on_error
        unknown = set(config.entities) - ENTITIES
        if unknown:
            raise ValueError(f"unknown secrets entities: {', '.join(sorted(unknown))}")
        wanted = frozenset(config.entities) or ENTITIES
        self._tokens = tuple(t for t in _TOKENS if t.entity in wanted)
        self._passwords = "PASSWORD" in wanted
        self._keys = "PRIVATE_KEY" in wanted

    def scan(self, text: str) -> list[Span]:
        """Every secret in `text` (read as a model reads it: see _normalise), by start."""
        return scan_view(self._scan, text)

    def _scan(self, text: str) -> list[Span]:
        """Every secret in `text` as written, ordered by start, overlaps resolved."""
        found: list[Span] = []
        for token in self._tokens:
            if token.gate in text and token.lead in text:
                for marker in token.markers:
                    if (at := text.find(marker)) >= 0:
                        _find_token(token, marker, text, at, found)
        if self._keys and (at := text.find(_BEGIN_LINE)) >= 0:
            _find_keys(text, at, found)
        if self._passwords and (
            "=" in text
            or ":" in text
            or '"' in text
            or "'" in text
            or ">" in text
            or " is" in text
            or " was" in text
        ):
            lowered = fold_case(text)
            if _has_key_marker(lowered):
                self._scan_assignments(text, lowered, found)
            # A colon first: one memchr, and most texts have none.
            if ":" in text and "://" in text:
                for m in _URL_PASSWORD.finditer(text):
                    found.append(Span("PASSWORD", *m.span("value"), _PASSWORD_SCORE))
        return resolve(found, _RANK)

    def _scan_assignments(self, text: str, lowered: str, found: list[Span]) -> None:
        for m in _ASSIGNMENT.finditer(lowered):
            group = "bare"
            if m.group("dq") is not None:
                group = "dq"
            elif m.group("sq") is not None:
                group = "sq"
            start, end = m.span(group)
            if group == "bare":
                while end > start and text[end - 1] in _TRAILING_PUNCTUATION:
                    end -= 1
            if (m.group("blank") is not None or m.group("comma") is not None) and " " in m.group(
                group
            ):
                # Without an operator a quoted phrase is prose or a message
                # (`tokens "each word"`, `print("password", "is wrong")`).
                continue
            if _value_ok(m.group(group), lowered[start:end], quoted=group != "bare"):
                found.append(Span("PASSWORD", start, end, _PASSWORD_SCORE))

    def holdback(self, text: str) -> int:
        """The trailing characters that are, or could still grow into, a secret."""
        return clear_of_findings(text, self.open_tail(text), self.scan)

    def open_tail(self, text: str) -> int:
        """The trailing characters that could still grow into a secret (see holdback)."""
        return tail_view(self._open_tail, text)

    def _open_tail(self, text: str) -> int:
        """open_tail on `text` as written."""
        held = max(
            tail_holdback(_TAIL, text, _TAIL_WINDOW, runs=_TAIL_RUN),
            tail_holdback(_URL_TAIL, text, _URL_TAIL_WINDOW),
        )
        if self._passwords:
            scheme = text[-_SCHEME_WINDOW:]
            if "earer" in scheme or "EARER" in scheme or "asic" in scheme or "ASIC" in scheme:
                held = max(held, tail_holdback(_SCHEME_TAIL, text, _SCHEME_WINDOW))
            recent = text[-_ASSIGNMENT_WINDOW:].lower()
            # Without a whole key name in reach, only a key name still being
            # typed can match: a single word.
            # ("api key" is the one name with a blank in it.)
            spaced = None if _has_key_marker(recent) or "api" in recent else 0
            held = max(held, tail_holdback(_ASSIGNMENT_TAIL, text, _ASSIGNMENT_WINDOW, spaced))
        if self._keys:
            held = max(held, self._key_holdback(text))
        return held

    def _key_holdback(self, text: str) -> int:
        """Hold a private key block from its BEGIN line until its END line arrives."""
        size = len(text)
        begin = text.rfind(_BEGIN, max(0, size - _KEY_WINDOW))
        if begin >= 0:
            header = _KEY_HEADER.match(text, begin)
            if header is None and _KEY_PARTIAL.match(text, begin):
                return size - begin
            if header is not None and not _KEY_END.search(text, header.end()):
                return size - begin
        return tail_holdback(_BEGIN_TAIL, text, len(_BEGIN))
