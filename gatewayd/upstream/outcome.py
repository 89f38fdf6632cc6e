"""How far one upstream attempt got, read from the transport and aiohttp's
exceptions, so the retry decision can tell a request that never left from one
the model may already be answering (and billing).

    stage                  meaning                                        retry.on name
    connect                no connection: refused, DNS, TLS, connect      connect-failure
                           timeout, no pool slot before the deadline
    reset-before-request   a connection was had, but it was found closed  reset-before-request
                           before any byte of this request was written
    sent                   the request was (being) written, no response   reset, timeout
                           headers came: closed, reset or stalled
    response               response headers arrived                       429, 5xx, NNN

"Written" is counted from the moment the transport (upstream/transport.py)
writes the request into a connection known to be open, so a doubt always
falls on the side of "sent": never retried by default.

FAILURES is the one table from aiohttp's exceptions to failure kinds, used by
the upstream client and the Presidio client alike; order matters (first match
wins, most specific first).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

import aiohttp

CONNECT: Final = "connect"
RESET_BEFORE_REQUEST: Final = "reset-before-request"
SENT: Final = "sent"
RESPONSE: Final = "response"

# Failure kinds of an exception, before knowing how far the request got.
CONNECT_FAILURE: Final = "connect-failure"
TIMEOUT: Final = "timeout"
RESET: Final = "reset"
# A malformed answer: something came back, so the model may have run; no
# retry condition names it.
INVALID: Final = "invalid"

FAILURES: Final[tuple[tuple[type[BaseException], str], ...]] = (
    # Before TimeoutError, which it subclasses: the request never left.
    (aiohttp.ConnectionTimeoutError, CONNECT_FAILURE),
    # Refused, DNS, TLS handshake: a ClientOSError, so before ClientConnectionError.
    (aiohttp.ClientConnectorError, CONNECT_FAILURE),
    # sock_read, the total deadline (aiohttp's own timeouts are TimeoutErrors).
    (TimeoutError, TIMEOUT),
    # ServerDisconnectedError, ClientOSError (ECONNRESET), writes to a closed transport.
    (aiohttp.ClientConnectionError, RESET),
    # Malformed status line or headers, a broken payload.
    (aiohttp.ClientError, INVALID),
)


def failure_kind(exc: BaseException) -> str | None:
    """The FAILURES kind of an exception, or None when it is not a transport failure."""
    for kind_of, kind in FAILURES:
        if isinstance(exc, kind_of):
            return kind
    return None


class Progress:
    """How far one attempt got; the transport fills it in. `on_connect`, when
    given, hears the moment the attempt has its connection."""

    __slots__ = ("connected", "on_connect", "written")

    def __init__(self, on_connect: Callable[[], None] | None = None) -> None:
        self.connected = False
        self.written = False
        self.on_connect = on_connect

    def connect(self) -> None:
        """The transport has the attempt's connection."""
        self.connected = True
        if self.on_connect is not None:
            self.on_connect()

    def outcome(self, kind: str) -> Outcome:
        """The Outcome of a failure of this kind at this point of the attempt."""
        if kind == CONNECT_FAILURE or not self.connected:
            return Outcome(CONNECT, CONNECT_FAILURE)
        if not self.written:
            return Outcome(RESET_BEFORE_REQUEST, RESET_BEFORE_REQUEST)
        return Outcome(SENT, kind)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One attempt's end: its stage, the retry.on name it matches, and for a
    response its status and headers (Retry-After and the like)."""

    stage: str
    condition: str
    status: int = 0
    headers: Mapping[str, str] | None = None

    @classmethod
    def response(cls, status: int, headers: Mapping[str, str]) -> Outcome:
        """The outcome of an attempt whose response headers arrived."""
        return cls(RESPONSE, str(status), status, headers)

    @property
    def may_have_reached_model(self) -> bool:
        """Did the request (possibly) reach the upstream's application?"""
        return self.stage in (SENT, RESPONSE)
