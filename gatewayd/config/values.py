"""Converters from one written value to what the schema holds.

Each takes a `Scalar` (after interpolation) and returns the typed value or
raises ValueError with a message for the operator. YAML gives typed scalars
and INI gives strings; every converter accepts both, so the two formats end in
the same Config. Messages may quote short values such as `5x` or `Info`, but
never URLs, keys or patterns, which can hold credentials.
"""

from __future__ import annotations

import enum
import ipaddress
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from gatewayd.config.schema import Listen, Network, Secret
from gatewayd.config.source import Scalar
from gatewayd.config.units import parse_duration, parse_size

T = TypeVar("T")
E = TypeVar("E", bound=enum.Enum)
Convert = Callable[[Scalar], T]

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_ENTITY = re.compile(r"[A-Z][A-Z0-9_]*")
_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*")
_LISTEN = re.compile(r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]+)):(?P<port>[0-9]+)")
_RETRY_ON = re.compile(
    r"connect-failure|reset-before-request|reset|timeout|connect|[1-5]xx|[1-5][0-9][0-9]"
)
# RFC 9110 section 5.6.2: a header name is a token.
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_LANGUAGE = re.compile(r"[a-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*")


def shown(text: str) -> str:
    """Quote a short, non-secret value for a message, cut so it cannot flood one."""
    return repr(text if len(text) <= 40 else text[:37] + "...")


def boolean(scalar: Scalar) -> bool:
    """true/false, also yes/no, on/off and 1/0 as INI and environments write them."""
    if isinstance(scalar.value, bool):
        return scalar.value
    word = scalar.text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"expected true or false, got {shown(scalar.text)}")


def _check_range(value: float, low: float | None, high: float | None, above: bool) -> None:
    if above and low is not None and value <= low:
        raise ValueError(f"must be greater than {low:g}")
    if low is not None and high is not None and not low <= value <= high:
        raise ValueError(f"must be between {low:g} and {high:g}")
    if low is not None and value < low:
        raise ValueError(f"must be at least {low:g}")
    if high is not None and value > high:
        raise ValueError(f"must be at most {high:g}")


def integer(low: int | None = None, high: int | None = None) -> Convert[int]:
    """A whole number within [low, high]."""

    def convert(scalar: Scalar) -> int:
        value = scalar.value
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            try:
                number = int(scalar.text.strip(), 10)
            except ValueError:
                raise ValueError(f"expected a whole number, got {shown(scalar.text)}") from None
        _check_range(number, low, high, above=False)
        return number

    return convert


def number(
    low: float | None = None, high: float | None = None, *, above: bool = False
) -> Convert[float]:
    """A finite number within [low, high] (or above `low` when `above`)."""

    def convert(scalar: Scalar) -> float:
        value = scalar.value
        if isinstance(value, int | float) and not isinstance(value, bool):
            result = float(value)
        else:
            try:
                result = float(scalar.text.strip())
            except ValueError:
                raise ValueError(f"expected a number, got {shown(scalar.text)}") from None
        if not math.isfinite(result):
            raise ValueError("expected a finite number")
        _check_range(result, low, high, above)
        return result

    return convert


def _with_unit(scalar: Scalar, parse: Callable[[str | int | float], T]) -> T:
    """A YAML number as it is, or the written text (`5s`, `8MiB`) parsed; errors quote it."""
    value = scalar.value
    raw = value if isinstance(value, int | float) and not isinstance(value, bool) else scalar.text
    try:
        return parse(raw)
    except ValueError as exc:
        raise ValueError(f"{exc}, got {shown(scalar.text)}") from None


def duration(*, positive: bool = False) -> Convert[float]:
    """Seconds from `250ms`, `5s`, `2m`, `1h` or a bare number; `positive` forbids 0."""

    def convert(scalar: Scalar) -> float:
        seconds = _with_unit(scalar, parse_duration)
        if positive and seconds == 0:
            raise ValueError("must be longer than 0s")
        return seconds

    return convert


def size(low: int = 0) -> Convert[int]:
    """Bytes from `8MiB`, `512KiB`, `10MB` or a bare integer, at least `low`."""

    def convert(scalar: Scalar) -> int:
        result = _with_unit(scalar, parse_size)
        _check_range(result, low, None, above=False)
        return result

    return convert


def choice(*options: str) -> Convert[str]:
    """One of `options`, any case; YAML's false counts as "off" where that is an option."""

    def convert(scalar: Scalar) -> str:
        # PyYAML reads a bare `off` (and `no`, `false`) as False; the writer of
        # `mode: off` meant the word.
        if scalar.value is False and "off" in options:
            return "off"
        word = scalar.text.strip().lower()
        if word in options:
            return word
        raise ValueError(f"must be one of {', '.join(options)}; got {shown(scalar.text)}")

    return convert


def member(kind: type[E]) -> Convert[E]:
    """A member of an enum, by its value (see `choice`)."""
    by_value = choice(*(str(item.value) for item in kind))
    return lambda scalar: kind(by_value(scalar))


def text(scalar: Scalar) -> str:
    """The value as written: YAML's `no` stays "no", `1.0` stays "1.0"."""
    return scalar.text


def entity(scalar: Scalar) -> str:
    """An entity type such as US_SSN: upper-case letters, digits and underscores."""
    if _ENTITY.fullmatch(scalar.text):
        return scalar.text
    raise ValueError(
        "an entity name is upper-case letters, digits and _, starting with a letter"
        f" (like US_SSN); got {shown(scalar.text)}"
    )


def known_entity(names: frozenset[str]) -> Convert[str]:
    """An entity type the filter kind can find, named as the filter names it."""

    def convert(scalar: Scalar) -> str:
        name = entity(scalar)
        if name in names:
            return name
        raise ValueError(f"must be one of {', '.join(sorted(names))}; got {shown(name)}")

    return convert


def listen(scalar: Scalar) -> Listen:
    """HOST:PORT with an IP address or name; IPv6 in brackets; port 0 picks a free one."""
    written = scalar.text.strip()
    match = _LISTEN.fullmatch(written)
    if match is None:
        raise ValueError(
            f"expected HOST:PORT such as 127.0.0.1:8080 or [::1]:8080; got {shown(written)}"
        )
    port = int(match.group("port"))
    if port > 65535:
        raise ValueError(f"port must be between 0 and 65535; got {port}")
    if match.group("v6") is not None:
        host = match.group("v6")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{shown(host)} in brackets is not an IPv6 address") from None
        return Listen(host, port)
    host = match.group("host")
    if not _is_host(host):
        raise ValueError(f"{shown(host)} is not an IPv4 address or host name")
    return Listen(host, port)


def network(scalar: Scalar) -> Network:
    """A CIDR block such as 10.0.0.0/8 or fd00::/8 (a bare address is a /32 or /128)."""
    try:
        return ipaddress.ip_network(scalar.text.strip())
    except ValueError:
        raise ValueError(
            f"expected a network such as 10.0.0.0/8 with no host bits set; got {shown(scalar.text)}"
        ) from None


def _url(scalar: Scalar, schemes: tuple[str, ...]) -> str:
    # The URL is never quoted back: it may carry a password or a token.
    written = scalar.text.strip()
    parts = urlsplit(written)
    wanted = " or ".join(f"{scheme}://" for scheme in schemes)
    if parts.scheme not in schemes:
        raise ValueError(f"must be a URL starting with {wanted}")
    try:
        _ = parts.port  # urlsplit checks the port only when asked
    except ValueError:
        raise ValueError("the URL's port is not a number between 1 and 65535") from None
    return written


def http_url(scalar: Scalar) -> str:
    """An http(s) URL with a host and no credentials, query or fragment; trailing / dropped."""
    written = _url(scalar, ("http", "https"))
    parts = urlsplit(written)
    if not parts.hostname or not _is_host(parts.hostname):
        raise ValueError("the URL needs a valid host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("credentials do not belong in the URL; use api_key")
    if parts.query or parts.fragment:
        raise ValueError("the URL must not have a query or fragment")
    # Request paths start with "/", so a base ending in "/" would double it.
    return written.rstrip("/")


def redis_url(scalar: Scalar) -> str:
    """A redis://, rediss:// or unix:// URL, as redis-py's from_url takes."""
    return _url(scalar, ("redis", "rediss", "unix"))


def _is_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        # 300.1.1.1 fits the name pattern but was meant as a (bad) address.
        return _HOSTNAME.fullmatch(host) is not None and not host.replace(".", "").isdigit()
    return True


def secret(scalar: Scalar) -> Secret:
    """A credential, wrapped so that it never shows in a repr or a message."""
    return Secret(scalar.text.strip())


def retry_condition(scalar: Scalar) -> str:
    """connect-failure, reset-before-request, reset, timeout, a status class such
    as 5xx, or a status such as 503 (`connect`, from older configs, is the first two)."""
    word = scalar.text.strip().lower()
    if _RETRY_ON.fullmatch(word):
        return word
    raise ValueError(
        "expected connect-failure, reset-before-request, reset, timeout,"
        f" a status class like 5xx or a status like 503; got {shown(word)}"
    )


def regex(scalar: Scalar) -> str:
    """A regular expression RE2 runs (linear time), compiled here so a bad one fails at load."""
    # Imported here: the filters package imports the schema's users.
    from gatewayd.guardrails.filters._linear import compile_linear

    # Its messages describe the fault without repeating the pattern.
    compiled = compile_linear(scalar.text)
    if compiled.search("") is not None:
        raise ValueError("the regular expression matches the empty string")
    return scalar.text


def path_under(base: Path) -> Convert[Path]:
    """A file path; a relative one is taken from `base` (the config file's directory)."""

    def convert(scalar: Scalar) -> Path:
        written = Path(scalar.text.strip())
        return written if written.is_absolute() else base / written

    return convert


def one_of(names: set[str], what: str) -> Convert[str]:
    """The name of something declared elsewhere in the file, such as a filter."""

    def convert(scalar: Scalar) -> str:
        name = scalar.text.strip()
        if name in names:
            return name
        raise ValueError(f"no {what} named {shown(name)} is declared")

    return convert


def existing_file(base: Path) -> Convert[Path]:
    """Like `path_under`, and the file must exist when the config is loaded."""
    resolve = path_under(base)

    def convert(scalar: Scalar) -> Path:
        path = resolve(scalar)
        if not path.is_file():
            raise ValueError(f"no such file: {path}")
        return path

    return convert


def route_prefix(scalar: Scalar) -> str:
    """A URL path prefix: starts with /, no spaces, no query or fragment."""
    written = scalar.text.strip()
    if not written.startswith("/") or any(char in written for char in " ?#"):
        raise ValueError(f"a prefix is a path starting with / such as /v1/; got {shown(written)}")
    return written


def language(scalar: Scalar) -> str:
    """A language code such as en or pt-BR, as Presidio names its recognizers' languages."""
    written = scalar.text.strip()
    if _LANGUAGE.fullmatch(written):
        return written
    raise ValueError(f"expected a language code such as en or de; got {shown(written)}")
