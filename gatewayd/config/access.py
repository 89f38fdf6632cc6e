"""Build the `clients`, `auth` and `ratelimit` sections: who may ask, and how much."""

from __future__ import annotations

import re

from gatewayd.config import values as v
from gatewayd.config.reader import Reader, Spec
from gatewayd.config.schema import AuthConfig, ClientConfig, Limits, RateLimitConfig, Secret
from gatewayd.config.source import Scalar

_SHA256 = re.compile(r"[0-9a-f]{64}")
# A model name as the APIs spell them (gpt-4o-mini, org/model:tag), or such a
# prefix ending in one `*`.
_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]*\*?|\*")

_LIMITS: Spec = {
    "requests_per_minute": v.integer(0),
    "burst": v.integer(1),
    "tokens_per_minute": v.integer(0),
    "max_concurrent": v.integer(0),
}


def key_sha256(scalar: Scalar) -> str:
    """64 hex digits (`gatewayd keygen` prints them), in lower case."""
    written = scalar.text.strip().lower()
    if not _SHA256.fullmatch(written):
        raise ValueError("must be 64 hex digits, the sha256 of the key (see gatewayd keygen)")
    return written


def model_pattern(scalar: Scalar) -> str:
    """A model name, or a prefix ending in `*`."""
    written = scalar.text.strip()
    if not _MODEL.fullmatch(written):
        raise ValueError(
            f"{v.shown(written)} is not a model name or a prefix ending in * (like gpt-4o*)"
        )
    return written


def limit_key(scalar: Scalar) -> str:
    """client, api_key, ip, tls_subject or header:NAME; a header name is kept in lower case."""
    written = scalar.text.strip()
    if written.lower() in ("client", "api_key", "ip", "tls_subject"):
        return written.lower()
    kind, _, name = written.partition(":")
    if kind != "header" or not v.HEADER_NAME.fullmatch(name):
        raise ValueError(
            f"must be client, api_key, ip, tls_subject or header:NAME; got {v.shown(written)}"
        )
    return f"header:{name.lower()}"


def redis_url(scalar: Scalar) -> Secret:
    """A redis:// or rediss:// URL; it may hold a password, so it never shows itself."""
    return Secret(v.redis_url(scalar))


def read_limits(reader: Reader) -> Limits:
    """The four limits of a level; burst alone, with no rate to burst over, is a problem."""
    limits = Limits(**reader.fields(_LIMITS))
    if limits.burst is not None and limits.requests_per_minute == 0:
        reader.problem("burst", "requests_per_minute is 0 (no limit): there is nothing to burst")
    return limits


def tls_subject(scalar: Scalar) -> str:
    """An RFC 4514 subject as gatewayd prints it (CN=billing,O=Acme)."""
    written = scalar.text.strip()
    if "=" not in written:
        raise ValueError("must be a certificate subject such as CN=billing,O=Acme")
    return written


def read_clients(root: Reader) -> dict[str, ClientConfig]:
    """Every well-formed client; one key, or one certificate subject, belongs to one client."""
    result: dict[str, ClientConfig] = {}
    owners: dict[tuple[str, str], str] = {}
    for name, reader in root.tables("clients"):
        digest = reader.value("key_sha256", key_sha256)
        subject = reader.value("tls_subject", tls_subject)
        models = reader.values("models", model_pattern)
        if models == ():
            reader.problem("models", "an empty list allows no model; leave it out to allow any")
        limits = read_limits(reader)
        if digest is None and subject is None:
            if not (reader.has("key_sha256") or reader.has("tls_subject")):
                reader.problem("key_sha256", "is required (or tls_subject)")
            continue
        marks = [(f, v) for f, v in (("key_sha256", digest), ("tls_subject", subject)) if v]
        taken = [mark for mark in marks if mark in owners]
        for mark in taken:
            what = "key" if mark[0] == "key_sha256" else "certificate subject"
            reader.problem(mark[0], f"client {owners[mark]} has the same {what}")
        if taken:
            continue
        owners.update(dict.fromkeys(marks, name))
        result[name] = ClientConfig(
            name=name, key_sha256=digest, tls_subject=subject, limits=limits, models=models
        )
    return result


def read_auth(reader: Reader) -> AuthConfig:
    return AuthConfig(**reader.fields({"require_client_key": v.boolean}))


def read_ratelimit(reader: Reader) -> RateLimitConfig:
    """The `ratelimit` table: the backend, the key, and the default limits."""
    fields = reader.fields(
        {
            "backend": v.choice("memory", "redis"),
            "redis_url": redis_url,
            "key": limit_key,
            "on_backend_error": v.choice("allow", "deny"),
            "redis_timeout": v.duration(positive=True),
            "shadow": v.boolean,
            "default_max_tokens": v.integer(1),
            "max_keys": v.integer(1000),
        }
    )
    config = RateLimitConfig(limits=read_limits(reader), **fields)
    if config.backend == "redis" and config.redis_url is None:
        reader.problem("redis_url", "is required with backend: redis")
    elif config.backend == "memory" and config.redis_url is not None:
        reader.problem("redis_url", "is read only with backend: redis")
    return config
