"""Integration fixtures: a real Presidio analyzer on loopback, built once per session."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from presidio_analyzer import AnalyzerEngine

from gatewayd.config.schema import PresidioFilterConfig, RetryConfig, UpstreamConfig
from gatewayd.guardrails.filters.presidio import PresidioFilter
from gatewayd.upstream.client import Upstream
from tests.fakes.presidio_server import (
    Analyzer,
    AnalyzerState,
    StartFilter,
    build_engine,
    make_app,
)


@pytest.fixture(scope="session")
def presidio_engine() -> AnalyzerEngine:
    """presidio-analyzer's engine (no_op NLP), shared by every test of the session."""
    return build_engine()


@pytest.fixture
async def analyzer(
    aiohttp_server: Callable[..., Awaitable[TestServer]], presidio_engine: AnalyzerEngine
) -> Analyzer:
    """A fresh analyzer server on a loopback port, with zeroed counters."""
    state = AnalyzerState()
    server = await aiohttp_server(make_app(presidio_engine, state))
    return Analyzer(str(server.make_url("")).rstrip("/"), state, server)


@pytest.fixture
async def start_filter(analyzer: Analyzer) -> AsyncIterator[StartFilter]:
    """Start PresidioFilters against `analyzer` (config overrides as keywords); closed after."""
    started: list[PresidioFilter] = []

    async def start(**overrides: Any) -> PresidioFilter:
        """One started filter; a fresh one has an empty memory cache."""
        params: dict[str, Any] = {"name": "presidio", "url": analyzer.url, "timeout": 2.0}
        params.update(overrides)
        presidio = PresidioFilter(PresidioFilterConfig(**params))
        await presidio.start()
        started.append(presidio)
        return presidio

    yield start
    for presidio in started:
        await presidio.close()


@pytest.fixture
async def make_upstream() -> AsyncIterator[Callable[..., Awaitable[Upstream]]]:
    """Builds started Upstreams with unique names (metrics are global) and closes them;
    retries back off for a millisecond or two unless `retry` says otherwise."""
    made: list[Upstream] = []

    async def make(*urls: str, **overrides: Any) -> Upstream:
        overrides.setdefault("retry", RetryConfig(attempts=3, backoff_base=0.001))
        config = UpstreamConfig(name=f"t-{uuid.uuid4().hex[:8]}", urls=urls, **overrides)
        upstream = Upstream(config)
        await upstream.start()
        made.append(upstream)
        return upstream

    yield make
    for upstream in made:
        await upstream.close()
