"""Durations and sizes as people write them: `250ms`, `2m`, `90d`, `8MiB`, `10MB`."""

from __future__ import annotations

import math
import re
from fractions import Fraction

_NUMBER = r"(?P<number>[0-9]+(?:\.[0-9]+)?)"
_DURATION = re.compile(_NUMBER + r"\s*(?P<unit>ms|s|m|h|d)?")
_SIZE = re.compile(_NUMBER + r"\s*(?P<unit>B|KB|MB|GB|KiB|MiB|GiB)?")

_SECONDS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_BYTES = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
}


def parse_duration(value: str | int | float) -> float:
    """Seconds in `value`: a bare number is seconds, else a number with ms|s|m|h|d."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.fullmatch(str(value).strip())
        if match is None:
            raise ValueError("expected a duration such as 250ms, 5s, 2m, 1h or 90d")
        seconds = float(match.group("number")) * _SECONDS[match.group("unit")]
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("a duration must be a finite number of seconds, not negative")
    return seconds


def parse_size(value: str | int | float) -> int:
    """Bytes in `value`: a bare integer is bytes, else a number with B|KB|MB|GB|KiB|MiB|GiB."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        match = _SIZE.fullmatch(str(value).strip())
        if match is None:
            raise ValueError("expected a size such as 512KiB, 8MiB, 1GiB or 10MB")
        # Fraction keeps `1.1KB` at exactly 1100 bytes.
        exact = Fraction(match.group("number")) * _BYTES[match.group("unit")]
        if exact.denominator != 1:
            raise ValueError("a size must be a whole number of bytes")
        size = int(exact)
    if size < 0:
        raise ValueError("a size cannot be negative")
    return size
