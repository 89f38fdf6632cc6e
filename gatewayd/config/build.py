"""Turn a source tree into a `Config`, collecting every problem on the way.

Sections are built in dependency order (filters before the policies that name
them, upstreams and policies before routes). A reference is checked against
the names *declared* in the file, not those that built cleanly, so one broken
upstream is reported once rather than again by every route that uses it.
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

from gatewayd.config import values as v
from gatewayd.config.access import read_auth, read_clients, read_ratelimit
from gatewayd.config.audit import read_audit
from gatewayd.config.guardrails import read_filters, read_policies
from gatewayd.config.reader import Context, Reader, Spec
from gatewayd.config.schema import (
    AuditConfig,
    AuthConfig,
    Config,
    LoggingConfig,
    RateLimitConfig,
    ServerConfig,
)
from gatewayd.config.server import read_server
from gatewayd.config.source import Table
from gatewayd.config.upstreams import read_routes, read_upstreams

_LOGGING: Spec = {
    "level": v.choice("debug", "info", "warning", "error"),
    "format": v.choice("json", "text"),
    "access_log": v.boolean,
}


def build_config(tree: Table, context: Context, source: Path) -> Config:
    """The Config for `tree`; check `context.problems` before trusting it."""
    root = Reader(context, tree, "", tree.line)
    base = source.parent
    filters = read_filters(root, base)
    policies = read_policies(root, root.declared("filters"))
    upstreams = read_upstreams(root)
    routes = read_routes(root, root.declared("upstreams"), root.declared("policies"))
    server = root.table("server")
    logging = root.table("logging")
    audit = root.table("audit")
    auth = root.table("auth")
    ratelimit = root.table("ratelimit")
    config = Config(
        source=source,
        server=read_server(server, base) if server is not None else ServerConfig(),
        logging=LoggingConfig(**logging.fields(_LOGGING))
        if logging is not None
        else LoggingConfig(),
        upstreams=MappingProxyType(upstreams),
        routes=MappingProxyType(routes),
        policies=MappingProxyType(policies),
        filters=MappingProxyType(filters),
        audit=read_audit(audit, base) if audit is not None else AuditConfig(),
        clients=MappingProxyType(read_clients(root)),
        auth=read_auth(auth) if auth is not None else AuthConfig(),
        ratelimit=read_ratelimit(ratelimit) if ratelimit is not None else RateLimitConfig(),
    )
    context.report_unknown()
    return config
