"""Durations and sizes as written in config files."""

from __future__ import annotations

import pytest

from gatewayd.config.units import parse_duration, parse_size


@pytest.mark.parametrize(
    ("written", "seconds"),
    [
        ("250ms", 0.25),
        ("5s", 5.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("90d", 90 * 86400.0),
        ("1.5s", 1.5),
        ("30", 30.0),
        ("0", 0.0),
        (" 5 s ", 5.0),
        (10, 10.0),
        (0.5, 0.5),
    ],
)
def test_duration(written: str | float, seconds: float) -> None:
    """Each unit converts to seconds, and a bare number is already seconds."""
    assert parse_duration(written) == pytest.approx(seconds)


@pytest.mark.parametrize("written", ["5x", "ms", "-1s", "1w", "5 seconds", "", "1e3s", -2])
def test_duration_refused(written: str | float) -> None:
    """Unknown units, negative and malformed durations are refused."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(written)


@pytest.mark.parametrize(
    ("written", "size"),
    [
        ("8MiB", 8 * 1024 * 1024),
        ("512KiB", 512 * 1024),
        ("1GiB", 1024**3),
        ("10MB", 10_000_000),
        ("100KB", 100_000),
        ("1.1KB", 1100),
        ("0.5KiB", 512),
        ("64B", 64),
        ("4096", 4096),
        (4096, 4096),
    ],
)
def test_size(written: str | int, size: int) -> None:
    """Binary and decimal units convert exactly to bytes; a bare integer is bytes."""
    assert parse_size(written) == size


@pytest.mark.parametrize("written", ["8mb", "8XB", "MiB", "-1", "1.5", 1.5, "8 MiB extra"])
def test_size_refused(written: str | float) -> None:
    """Unknown units, fractions of a byte and negative sizes are refused."""
    with pytest.raises(ValueError, match="size"):
        parse_size(written)
