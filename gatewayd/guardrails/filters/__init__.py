"""Built-in filters, one module per kind; `build_filter` turns config into one."""

from __future__ import annotations

from gatewayd.config.schema import (
    FilterConfig,
    InjectionFilterConfig,
    KeywordsFilterConfig,
    PiiFilterConfig,
    PresidioFilterConfig,
    SecretsFilterConfig,
)
from gatewayd.guardrails.types import Filter
from gatewayd.redis_client import RedisClients


def build_filter(config: FilterConfig, redis: RedisClients | None = None) -> Filter:
    """Compile one configured filter; regexes and word lists are built here, once.
    A Presidio cache's Redis connection comes from `redis`, the process's."""
    # Imported here so a config without Presidio never pays for its client.
    if isinstance(config, PiiFilterConfig):
        from gatewayd.guardrails.filters.regex_pii import PiiFilter

        return PiiFilter(config)
    if isinstance(config, SecretsFilterConfig):
        from gatewayd.guardrails.filters.secrets import SecretsFilter

        return SecretsFilter(config)
    if isinstance(config, KeywordsFilterConfig):
        from gatewayd.guardrails.filters.keywords import KeywordsFilter

        return KeywordsFilter(config)
    if isinstance(config, InjectionFilterConfig):
        from gatewayd.guardrails.filters.injection import InjectionFilter

        return InjectionFilter(config)
    if isinstance(config, PresidioFilterConfig):
        from gatewayd.guardrails.filters.presidio import PresidioFilter

        return PresidioFilter(config, redis)
    raise TypeError(f"unknown filter config {type(config).__name__}")
