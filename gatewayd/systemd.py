"""sd_notify: tell systemd (Type=notify) that gatewayd is ready, reloading or stopping.

The protocol is one datagram of newline-separated `KEY=VALUE` lines sent to the
AF_UNIX socket named by $NOTIFY_SOCKET: a filesystem path, or an abstract
socket written `@name`. Without $NOTIFY_SOCKET (not under systemd, or a unit of
another type) every call is a no-op returning False, so callers never check.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


def _address(value: str) -> str:
    # A leading '@' names a socket in the abstract namespace, spelled with a NUL.
    return "\0" + value[1:] if value.startswith("@") else value


def _status_line(text: str) -> str:
    # A newline would end the STATUS value and start a bogus KEY=VALUE line.
    return "STATUS=" + " ".join(text.splitlines())


def notify(*lines: str) -> bool:
    """Send `KEY=VALUE` lines to systemd as one datagram; False when nobody listens."""
    target = os.environ.get("NOTIFY_SOCKET")
    if not target or not lines:
        return False
    # A fresh socket per call: notifications are a handful per process lifetime,
    # and holding none open means no fd leaks into workers or re-exec'd children
    # and a socket systemd re-created after a daemon-reexec is simply found again.
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(lines).encode(), _address(target))
    except OSError as exc:
        # The manager may be gone (a vanished socket during shutdown, a test
        # harness): that must never take the daemon down with it.
        log.debug("sd_notify to %s failed: %s", target, exc.strerror or exc)
        return False
    return True


def ready(status: str | None = None) -> bool:
    """Report start-up (or a reload) complete; call only once the sockets are bound."""
    return notify("READY=1", *([_status_line(status)] if status else []))


def reloading() -> bool:
    """Report that a configuration reload started; `ready()` must follow when it ends."""
    # systemd pairs RELOADING=1 with a CLOCK_MONOTONIC timestamp so it can tell
    # this reload from a stale notification (required by Type=notify-reload).
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}")


def stopping() -> bool:
    """Report that a graceful shutdown started."""
    return notify("STOPPING=1")


def status(text: str) -> bool:
    """Set the free-form status line `systemctl status` shows."""
    return notify(_status_line(text))
