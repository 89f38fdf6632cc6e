"""`gatewayd keygen NAME`: a new client key, shown once, and the config lines to paste.

The gateway stores only the key's sha256 (clients.NAME.key_sha256); the key
itself exists on the operator's screen and then with the client.
"""

from __future__ import annotations

import hashlib
import secrets

from gatewayd.config.reader import NAME

# Like other API keys, a recognisable prefix (secret scanners and people
# can tell what leaked) and 256 random bits.
PREFIX = "gwk-"


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def digest(key: str) -> str:
    """What clients.NAME.key_sha256 holds for `key`."""
    return hashlib.sha256(key.encode()).hexdigest()


def keygen(name: str) -> tuple[int, str]:
    """The exit status and the text to print for a new key of client `name`."""
    if not NAME.fullmatch(name):
        return 2, (
            f"gatewayd keygen: {name!r} is not a client name"
            " (letters, digits, _ and -, starting with a letter or _)"
        )
    key = new_key()
    return 0, (
        f"{key}\n"
        "\n"
        f"# The key above is shown once: give it to {name}; gatewayd keeps only its hash.\n"
        "# Paste under `clients:` in gatewayd.yaml (limits and models are optional):\n"
        "clients:\n"
        f"  {name}:\n"
        f"    key_sha256: {digest(key)}\n"
    )
