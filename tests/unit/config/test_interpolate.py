"""${VAR} and ${VAR:-default} references in string values."""

from __future__ import annotations

import pytest

from gatewayd.config.interpolate import interpolate

ENV = {"HOST": "example.com", "EMPTY": "", "PORT": "8443"}


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("https://${HOST}:${PORT}/v1", "https://example.com:8443/v1"),
        ("${MISSING:-fallback}", "fallback"),
        ("${EMPTY:-fallback}", "fallback"),
        ("${HOST:-fallback}", "example.com"),
        ("${MISSING:-}", ""),
        ("${MISSING:-a:b/c d}", "a:b/c d"),
        ("$${HOST}", "${HOST}"),
        ("price: 5$$", "price: 5$"),
        ("^[0-9]+$", "^[0-9]+$"),
        ("a $ b", "a $ b"),
        ("no references", "no references"),
    ],
)
def test_interpolate(written: str, expected: str) -> None:
    """References are filled from the environment, defaults cover unset or empty variables."""
    assert interpolate(written, ENV) == expected


def test_empty_variable_without_default_is_empty() -> None:
    """A variable that is set but empty is used as it is when no default is given."""
    assert interpolate("x${EMPTY}y", ENV) == "xy"


def test_unset_variable_names_the_variable() -> None:
    """An unset ${VAR} without a default is an error naming the variable."""
    with pytest.raises(ValueError, match=r"environment variable API_TOKEN is not set"):
        interpolate("Bearer ${API_TOKEN}", ENV)


@pytest.mark.parametrize("written", ["${1BAD}", "${}", "${A-b}", "${A:=b}"])
def test_malformed_reference(written: str) -> None:
    """A reference that is not ${NAME} or ${NAME:-default} is refused."""
    with pytest.raises(ValueError, match="malformed reference"):
        interpolate(written, ENV)


def test_malformed_reference_is_not_quoted() -> None:
    """A value pasted inside ${...} by mistake does not reach the message."""
    with pytest.raises(ValueError, match="malformed reference") as caught:
        interpolate("${sk-live-123}", ENV)
    assert "sk-live" not in str(caught.value)


def test_unterminated_reference() -> None:
    """A ${ without its closing brace is refused and points at $$."""
    with pytest.raises(ValueError, match=r"unterminated \$\{"):
        interpolate("abc ${HOST", ENV)
