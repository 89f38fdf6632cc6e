"""The validated configuration tree: frozen dataclasses, no raw dicts.

The loaders (YAML, INI) produce a tree of plain values with line numbers; the
builder turns it into these objects or a list of problems. Everything on the
request path reads these objects, never the source text.

Durations are seconds (float), sizes are bytes (int). Names of upstreams,
routes, policies and filters are the keys they were declared under.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
OnError = Literal["allow", "block"]


class Mode(enum.Enum):
    """What a policy does with what its filters find."""

    OFF = "off"
    MONITOR = "monitor"
    REDACT = "redact"
    BLOCK = "block"


class Action(enum.Enum):
    """What happens to one finding; a policy's mode is the default action."""

    MONITOR = "monitor"
    REDACT = "redact"
    BLOCK = "block"


class Secret(str):
    """A string that never shows itself in a repr, a log line or a traceback."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Secret('***')"


def _frozen_map() -> Mapping[str, object]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Listen:
    host: str = "127.0.0.1"
    port: int = 8080

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """HTTPS on the listener; the files are read at load and again on every reload."""

    cert: Path
    key: Path
    # Clients must present a certificate this CA bundle verifies (mutual TLS).
    client_ca: Path | None = None
    min_version: Literal["1.2", "1.3"] = "1.2"
    # An OpenSSL cipher list for TLS 1.2; TLS 1.3's suites are not configurable.
    ciphers: str | None = None


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: Listen = field(default_factory=Listen)
    workers: int = 1
    max_body_size: int = 8 * 1024 * 1024
    read_timeout: float = 30.0
    shutdown_timeout: float = 30.0
    trusted_proxies: tuple[Network, ...] = ()
    tls: TlsConfig | None = None
    # The listen(2) queue; the kernel caps it at net.core.somaxconn.
    backlog: int = 1024
    # With workers: a worker that has served this many (plus a random share
    # of the jitter, so they do not all retire at once) is replaced.
    max_requests: int | None = None
    max_requests_jitter: int = 0
    # With workers: one whose event loop has not reported for this long is
    # killed and replaced. gunicorn's default; see docs/configuration.md.
    worker_timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"
    access_log: bool = True


@dataclass(frozen=True, slots=True)
class RetryConfig:
    # Total tries including the first; 1 disables retries.
    attempts: int = 3
    backoff_base: float = 0.1
    backoff_max: float = 2.0
    # The longest Retry-After (or retry-after-ms) the gateway waits out itself;
    # a longer one goes back to the client with the upstream's response.
    retry_after_max: float = 10.0
    # Conditions worth another try, in Envoy's words (see upstream/retry.py).
    # The default holds only outcomes where the model cannot have run or the
    # upstream refused the work: a request that reached the model may already
    # have been billed.
    on: tuple[str, ...] = (
        "connect-failure",
        "reset-before-request",
        "429",
        "502",
        "503",
        "504",
    )
    # Retries may add at most this fraction of recent requests (Envoy's retry
    # budget), so a sick upstream is not hit with attempts x traffic; moving
    # to an untried target after a failure that delivered nothing is free.
    budget_ratio: float = 0.2


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    failure_threshold: int = 5
    open_for: float = 30.0
    half_open_max: int = 1


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    name: str
    urls: tuple[str, ...]
    api_key: Secret | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 120.0
    total_timeout: float = 600.0
    pool_size: int = 100
    pool_size_per_host: int = 0
    keepalive: float = 30.0
    dns_ttl: float = 300.0
    retry: RetryConfig = field(default_factory=RetryConfig)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    # Set on every request, replacing the client's (e.g. Azure's api-key);
    # (name, value) pairs in the order written, so the request path walks a
    # tuple. Values are secrets: never shown, logged or sent back to clients.
    headers: tuple[tuple[str, Secret], ...] = ()
    # More client headers never forwarded, beside the built-in credential list.
    drop_headers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Limits:
    """Rate limits of one level: the `ratelimit` defaults, a route's, a client's.

    None inherits the level below (client over route over defaults); 0 means
    no such limit.
    """

    requests_per_minute: int | None = None
    # Requests accepted at once from idle (GCRA's tolerance); None is a
    # tenth of requests_per_minute, at least 1.
    burst: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent: int | None = None

    def over(self, base: Limits) -> Limits:
        """These limits where set, `base`'s elsewhere."""
        return Limits(
            requests_per_minute=_first(self.requests_per_minute, base.requests_per_minute),
            burst=_first(self.burst, base.burst),
            tokens_per_minute=_first(self.tokens_per_minute, base.tokens_per_minute),
            max_concurrent=_first(self.max_concurrent, base.max_concurrent),
        )


def _first(value: int | None, fallback: int | None) -> int | None:
    return fallback if value is None else value


@dataclass(frozen=True, slots=True)
class RouteConfig:
    name: str
    prefix: str
    upstream: str
    policy: str | None = None
    strip_prefix: bool = False
    # Another upstream, asked when every target of `upstream` is ejected or
    # its last attempt failed in a way retry.on allows retrying.
    fallback: str | None = None
    # Limits of this route's own budget (per limit key), over `ratelimit`'s;
    # None shares the gateway-wide budget.
    ratelimit: Limits | None = None


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    name: str
    mode: Mode = Mode.MONITOR
    input: tuple[str, ...] = ()
    output: tuple[str, ...] = ()
    restore: bool = False
    on_error: OnError = "block"
    # An endpoint or a field no shape describes: refused (400
    # unsupported_request) or forwarded unread and audited as unchecked.
    unknown: OnError = "block"
    # Per-entity overrides of the mode, e.g. {"CREDIT_CARD": Action.BLOCK}.
    entities: Mapping[str, Action] = field(default_factory=_frozen_map)  # type: ignore[arg-type]
    # Adds X-Gatewayd-Guardrail with entity counts (never values) to responses.
    summary_header: bool = False


# --- filters: one dataclass per kind, all sharing name and on_error ---------


@dataclass(frozen=True, slots=True)
class CustomPattern:
    entity: str
    pattern: str


@dataclass(frozen=True, slots=True)
class PiiFilterConfig:
    name: str
    on_error: OnError | None = None
    # Empty means every built-in entity of the kind.
    entities: tuple[str, ...] = ()
    custom: tuple[CustomPattern, ...] = ()
    # Regions whose national phone formats count (numbers written with +CC
    # count for every region): ISO 3166 codes as libphonenumber knows them.
    phone_regions: tuple[str, ...] = (
        "US", "GB", "DE", "FR", "ES", "IT", "NL", "IN", "JP", "CN", "KR", "AU",
    )  # fmt: skip
    kind: Literal["pii"] = "pii"


@dataclass(frozen=True, slots=True)
class SecretsFilterConfig:
    name: str
    on_error: OnError | None = None
    entities: tuple[str, ...] = ()
    kind: Literal["secrets"] = "secrets"


@dataclass(frozen=True, slots=True)
class KeywordsFilterConfig:
    name: str
    on_error: OnError | None = None
    words: tuple[str, ...] = ()
    # A file of one phrase per line ('#' comments), read once at load.
    file: Path | None = None
    entity: str = "KEYWORD"
    kind: Literal["keywords"] = "keywords"


@dataclass(frozen=True, slots=True)
class InjectionFilterConfig:
    name: str
    on_error: OnError | None = None
    # A text whose summed heuristic score reaches this is a finding.
    threshold: float = 0.8
    entity: str = "PROMPT_INJECTION"
    kind: Literal["injection"] = "injection"


@dataclass(frozen=True, slots=True)
class PresidioFilterConfig:
    name: str
    url: str
    on_error: OnError | None = None
    timeout: float = 0.5
    score_threshold: float = 0.5
    entities: tuple[str, ...] = ()
    language: str = "en"
    allow_list: tuple[str, ...] = ()
    # Calls in flight at once; a further call waits up to queue_timeout.
    max_in_flight: int = 16
    queue_timeout: float = 0.05
    cache_size: int = 10_000
    cache_ttl: float = 600.0
    # Optional shared cache for all gatewayd instances.
    redis_url: str | None = None
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    # Send all texts of a request as one `text` list (analyzer 2.2.361+);
    # false for older ones, which take one string per call.
    batch: bool = True
    kind: Literal["presidio"] = "presidio"


FilterConfig = (
    PiiFilterConfig
    | SecretsFilterConfig
    | KeywordsFilterConfig
    | InjectionFilterConfig
    | PresidioFilterConfig
)


# --- audit: one dataclass per sink kind, under the writer's settings --------


@dataclass(frozen=True, slots=True)
class JsonlSinkConfig:
    path: Path = Path("/var/lib/gatewayd/audit.jsonl")
    kind: Literal["jsonl"] = "jsonl"


@dataclass(frozen=True, slots=True)
class PostgresSinkConfig:
    # A postgresql:// URL; it holds the password, so it never shows itself.
    dsn: Secret
    # Where events wait while the database cannot take them.
    spool_dir: Path = Path("/var/lib/gatewayd/audit-spool")
    partition: Literal["none", "monthly"] = "none"
    # Rows older than this are removed in the background; None keeps them.
    retention: float | None = None
    # A batch not stored within this goes to the spool instead. The queue
    # must hold this long of traffic while a hung database times out.
    write_timeout: float = 2.0
    kind: Literal["postgres"] = "postgres"


@dataclass(frozen=True, slots=True)
class OffSinkConfig:
    kind: Literal["off"] = "off"


SinkConfig = JsonlSinkConfig | PostgresSinkConfig | OffSinkConfig


@dataclass(frozen=True, slots=True)
class AuditConfig:
    sink: SinkConfig = field(default_factory=JsonlSinkConfig)
    batch_size: int = 256
    flush_interval: float = 1.0
    queue_size: int = 10_000
    # A full queue makes the request wait for room (block) or loses the event
    # (drop); a writer that made no room for block_timeout drops until it moves.
    on_full: Literal["block", "drop"] = "block"
    block_timeout: float = 1.0


# --- clients, auth and rate limits -------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientConfig:
    name: str
    # Hex sha256 of the client's bearer key: the gateway never holds the key.
    key_sha256: str | None = None
    # Or the RFC 4514 subject of its client certificate, verified in the
    # handshake (server.tls.client_ca).
    tls_subject: str | None = None
    limits: Limits = field(default_factory=Limits)
    # Model names, or `prefix*` patterns, the client may ask for; None is any.
    models: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class AuthConfig:
    # A request without a known client key gets 401 invalid_api_key.
    require_client_key: bool = False


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    backend: Literal["memory", "redis"] = "memory"
    redis_url: Secret | None = None
    # What a budget belongs to: client, api_key, ip, tls_subject or header:NAME
    # (lower case).
    key: str = "client"
    limits: Limits = field(default_factory=Limits)
    # A Redis that fails or answers slower than redis_timeout: decide with
    # this process's own limiter (allow) or refuse with 503 (deny).
    on_backend_error: Literal["allow", "deny"] = "allow"
    redis_timeout: float = 0.05
    # Count would-be refusals without refusing.
    shadow: bool = False
    # Output tokens reserved for a generating request that names no maximum.
    default_max_tokens: int = 4096
    # Keys the memory backend holds at most; idle keys go first.
    max_keys: int = 1_000_000


@dataclass(frozen=True, slots=True)
class Config:
    """One whole, validated configuration; `source` is the file it came from."""

    source: Path
    server: ServerConfig = field(default_factory=ServerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    upstreams: Mapping[str, UpstreamConfig] = field(default_factory=_frozen_map)  # type: ignore[arg-type]
    routes: Mapping[str, RouteConfig] = field(default_factory=_frozen_map)  # type: ignore[arg-type]
    policies: Mapping[str, PolicyConfig] = field(default_factory=_frozen_map)  # type: ignore[arg-type]
    filters: Mapping[str, FilterConfig] = field(default_factory=_frozen_map)  # type: ignore[arg-type]
    audit: AuditConfig = field(default_factory=AuditConfig)
    clients: Mapping[str, ClientConfig] = field(default_factory=_frozen_map)  # type: ignore[arg-type]
    auth: AuthConfig = field(default_factory=AuthConfig)
    ratelimit: RateLimitConfig = field(default_factory=RateLimitConfig)
