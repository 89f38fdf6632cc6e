"""Every metric gatewayd exports, declared once, on gatewayd's own registry.

Label values come from small fixed sets (route, upstream, filter and entity
names from config; status codes; fixed reason words). User data never
becomes a label.

With several workers (gatewayd.arbiter) each process writes its values to
files in $PROMETHEUS_MULTIPROC_DIR, and /metrics on any worker adds up the
whole group. prometheus_client chooses in-memory or file-backed values when
it is first imported, so the arbiter's caller sets that variable before
importing anything that imports this module. Each gauge says how the group's
values combine (`multiprocess_mode`); a lone process ignores that.
"""

from __future__ import annotations

import functools
import os
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.multiprocess import MultiProcessCollector

from gatewayd import __version__

# Read once, as prometheus_client itself did when this module imported it.
MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR")

REGISTRY = CollectorRegistry(auto_describe=True)

# Latency buckets for a proxy in front of LLMs: sub-millisecond overhead up to
# multi-minute completions.
_LATENCY = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
)
_FILTER_LATENCY = (0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1)

REQUESTS = Counter(
    "gatewayd_requests_total",
    "Requests answered, by route and HTTP status.",
    ["route", "status"],
    registry=REGISTRY,
)
REQUEST_DURATION = Histogram(
    "gatewayd_request_duration_seconds",
    "Time from request received to response finished, by route.",
    ["route"],
    buckets=_LATENCY,
    registry=REGISTRY,
)
UPSTREAM_DURATION = Histogram(
    "gatewayd_upstream_duration_seconds",
    "Time from sending to an upstream to its response headers, per attempt.",
    ["upstream"],
    buckets=_LATENCY,
    registry=REGISTRY,
)
UPSTREAM_RETRIES = Counter(
    "gatewayd_upstream_retries_total",
    "Retried upstream attempts, by reason (a retry.on condition or an HTTP status);"
    " budget_exhausted counts retries the retry budget refused.",
    ["upstream", "reason"],
    registry=REGISTRY,
)
CIRCUIT_OPEN = Gauge(
    "gatewayd_circuit_open",
    "1 while an upstream target's circuit breaker is open (or half-open), else 0.",
    # target is the target's URL without credentials: a small fixed set, from config.
    ["upstream", "target"],
    registry=REGISTRY,
    # Every worker has its own breaker per target: 1 while any live one is
    # open keeps the 0/1 meaning; a dead worker's breaker died with it.
    multiprocess_mode="livemax",
)
GUARDRAIL_FINDINGS = Counter(
    "gatewayd_guardrail_findings_total",
    "Guardrail findings, by filter, entity type, stage and action taken.",
    ["filter", "entity", "stage", "action"],
    registry=REGISTRY,
)
FILTER_DURATION = Histogram(
    "gatewayd_filter_duration_seconds",
    "Time one filter spent on one request stage.",
    ["filter"],
    buckets=_FILTER_LATENCY,
    registry=REGISTRY,
)
GUARDRAIL_UNKNOWN = Counter(
    "gatewayd_guardrail_unknown_total",
    "Payloads with an endpoint, field or stream event no shape describes, by policy,"
    " stage and outcome (refused, or passed unread).",
    ["policy", "stage", "outcome"],
    registry=REGISTRY,
)
GUARDRAIL_OFF_LOOP = Counter(
    "gatewayd_guardrail_off_loop_scans_total",
    "Hand-offs of a payload stage's long texts to a worker thread: the filters, and"
    " the placeholder work (reserving, protecting, restoring) around them.",
    registry=REGISTRY,
)
FILTER_ERRORS = Counter(
    "gatewayd_filter_errors_total",
    "Remote filter failures, by filter, kind of error and on_error outcome.",
    ["filter", "kind", "outcome"],
    registry=REGISTRY,
)
PRESIDIO_CALLS = Counter(
    "gatewayd_presidio_calls_total",
    "Calls made to a Presidio analyzer.",
    ["filter"],
    registry=REGISTRY,
)
PRESIDIO_TEXTS = Counter(
    "gatewayd_presidio_texts_total",
    "Texts sent to a Presidio analyzer (after the cache).",
    ["filter"],
    registry=REGISTRY,
)
PRESIDIO_CACHE = Counter(
    "gatewayd_presidio_cache_total",
    "Presidio result cache lookups, by tier (memory, redis) and result (hit, miss, error).",
    ["filter", "tier", "result"],
    registry=REGISTRY,
)
PRESIDIO_DURATION = Histogram(
    "gatewayd_presidio_duration_seconds",
    "Latency of calls to a Presidio analyzer.",
    ["filter"],
    buckets=_LATENCY,
    registry=REGISTRY,
)
UNREADABLE_ANSWERS = Counter(
    "gatewayd_unreadable_answers_total",
    "Answers the output guardrails had to read but could not, by reason (encoding, "
    "size, json) and outcome (refused, or passed unchecked by on_error allow).",
    ["route", "reason", "outcome"],
    registry=REGISTRY,
)
RATELIMIT_REJECTIONS = Counter(
    "gatewayd_ratelimit_rejections_total",
    "Requests refused by the rate limiter, by route and limit (requests, tokens, concurrency).",
    ["route", "limit"],
    registry=REGISTRY,
)
RATELIMIT_SHADOW = Counter(
    "gatewayd_ratelimit_shadow_rejections_total",
    "Requests ratelimit.shadow let through that the limiter would have refused, by route"
    " and limit.",
    ["route", "limit"],
    registry=REGISTRY,
)
RATELIMIT_BACKEND_ERRORS = Counter(
    "gatewayd_ratelimit_backend_errors_total",
    "Rate-limit decisions Redis could not make (timeout, connection, error; skipped while"
    " a recent failure lasts), each then settled by ratelimit.on_backend_error.",
    ["reason"],
    registry=REGISTRY,
)
AUDIT_EVENTS = Counter(
    "gatewayd_audit_events_total",
    "Audit events by outcome: written (stored by the sink), spooled (to disk while the"
    " sink was unavailable), replayed (stored from the spool), dead_lettered (refused"
    " by the sink, kept in the dead-letter file), dropped (lost).",
    ["outcome"],
    registry=REGISTRY,
)
AUDIT_QUEUE_DEPTH = Gauge(
    "gatewayd_audit_queue_depth",
    "Audit events waiting to be written.",
    registry=REGISTRY,
    # Each worker has its own queue: the group's backlog is their sum.
    multiprocess_mode="livesum",
)
AUDIT_FLUSH_DURATION = Histogram(
    "gatewayd_audit_flush_duration_seconds",
    "Time to store one batch of audit events, by target (jsonl, postgres, spool).",
    ["target"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
AUDIT_SPOOL_BYTES = Gauge(
    "gatewayd_audit_spool_bytes",
    "Bytes of audit events waiting in the on-disk spool for the sink to come back.",
    registry=REGISTRY,
    # Each worker spools to its own files: the group's backlog is their sum.
    multiprocess_mode="livesum",
)
AUDIT_SPOOL_OLDEST = Gauge(
    "gatewayd_audit_spool_oldest_event_timestamp_seconds",
    "Unix time of the oldest audit event in the on-disk spool; 0 while the spool is empty.",
    registry=REGISTRY,
    # One series per live worker (a pid label): the oldest is the smallest
    # non-zero one, which no built-in mode computes (min would pick an empty
    # worker's 0).
    multiprocess_mode="liveall",
)
CONFIG_RELOADS = Counter(
    "gatewayd_config_reloads_total",
    "Configuration reloads by result (success, error).",
    ["result"],
    registry=REGISTRY,
)
CONFIG_GENERATION = Gauge(
    "gatewayd_config_generation",
    "How many configurations this process has loaded (1 at start).",
    registry=REGISTRY,
    # Generations only grow and a respawned worker starts at the arbiter's
    # current one, so the highest is the configuration being served.
    multiprocess_mode="max",
)
TLS_CERT_EXPIRY = Gauge(
    "gatewayd_tls_cert_expiry_timestamp_seconds",
    "Unix time at which the listener's certificate expires (absent without server.tls).",
    registry=REGISTRY,
    # Every worker reloads the same files; the latest reload's value holds
    # even when a rotation brings a certificate that expires sooner.
    multiprocess_mode="livemostrecent",
)
WORKER_RESTARTS = Counter(
    "gatewayd_worker_restarts_total",
    "Workers the arbiter replaced, by reason (died: exited or was killed while serving;"
    " timeout: its event loop stopped sending heartbeats for server.worker_timeout;"
    " max_requests: retired after serving server.max_requests).",
    ["reason"],
    registry=REGISTRY,
)
BUILD_INFO = Gauge(
    "gatewayd_build_info",
    "Always 1; the version label says which gatewayd this is.",
    ["version"],
    registry=REGISTRY,
    # Set at import, in the arbiter before it forks; its file holds the 1.
    multiprocess_mode="max",
)
BUILD_INFO.labels(version=__version__).set(1)
# Counters whose label values are known start at 0: a series born at 1 by
# the first failed reload or restart is no increase() to Prometheus, so the
# alerts on them would miss it.
for _result in ("success", "error"):
    CONFIG_RELOADS.labels(_result)
for _reason in ("died", "timeout", "max_requests"):
    WORKER_RESTARTS.labels(_reason)


_M = TypeVar("_M", bound=MetricWrapperBase)


@functools.lru_cache(maxsize=8192)
def child(metric: _M, *labels: str) -> _M:
    """`metric.labels(*labels)`, remembered: label sets on the request path
    repeat, and labels() validates and locks on every call."""
    return metric.labels(*labels)


def exposition() -> bytes:
    """The registry (or, with workers, the whole group's files) in Prometheus text format."""
    if MULTIPROC_DIR is None:
        return generate_latest(REGISTRY)
    # A fresh registry per scrape, as prometheus_client's multiprocess mode
    # requires: the collector reads every worker's files when collected.
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=MULTIPROC_DIR)  # type: ignore[no-untyped-call]
    return generate_latest(registry)
