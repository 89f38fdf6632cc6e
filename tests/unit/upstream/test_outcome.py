"""The one table from aiohttp's exceptions to failure kinds, and how far an attempt got."""

from __future__ import annotations

import aiohttp
import pytest

from gatewayd.guardrails.filters.presidio_client import _error_kind
from gatewayd.upstream.outcome import (
    CONNECT,
    CONNECT_FAILURE,
    INVALID,
    RESET,
    RESET_BEFORE_REQUEST,
    SENT,
    TIMEOUT,
    Outcome,
    Progress,
    failure_kind,
)


@pytest.mark.parametrize(
    ("exc", "kind", "presidio"),
    [
        (aiohttp.ConnectionTimeoutError(), CONNECT_FAILURE, "connect"),
        (aiohttp.SocketTimeoutError(), TIMEOUT, "timeout"),
        (TimeoutError(), TIMEOUT, "timeout"),
        (aiohttp.ServerDisconnectedError(), RESET, "connect"),
        (aiohttp.ClientOSError(104, "reset"), RESET, "connect"),
        (aiohttp.ClientPayloadError(), INVALID, "http"),
    ],
)
def test_one_table_serves_the_upstream_and_presidio_clients(
    exc: BaseException, kind: str, presidio: str
) -> None:
    """Both clients read an aiohttp exception alike; a connect timeout is a connect failure."""
    assert failure_kind(exc) == kind
    assert _error_kind(exc) == presidio


def test_non_transport_errors_are_not_classified() -> None:
    """An exception outside aiohttp's failures has no kind."""
    assert failure_kind(ValueError()) is None


def test_progress_says_how_far_the_attempt_got() -> None:
    """The same reset is connect, reset-before-request or sent by what happened before it."""
    progress = Progress()
    assert progress.outcome(RESET) == Outcome(CONNECT, CONNECT_FAILURE)
    progress.connected = True
    assert progress.outcome(RESET) == Outcome(RESET_BEFORE_REQUEST, RESET_BEFORE_REQUEST)
    progress.written = True
    assert progress.outcome(TIMEOUT) == Outcome(SENT, TIMEOUT)
    assert progress.outcome(TIMEOUT).may_have_reached_model
    assert progress.outcome(CONNECT_FAILURE) == Outcome(CONNECT, CONNECT_FAILURE)
