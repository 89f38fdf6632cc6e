"""A real Presidio analyzer behind the official REST shape, for tests and development.

presidio-analyzer's `AnalyzerEngine` runs with the `no_op` NLP engine (pattern
recognizers only: e-mail, IBAN, credit card, phone, ...; no spaCy model, no
download). `POST /analyze` takes `text` as a string (answered by a list of
results) or as a list of strings (answered by a list of lists), like the
official server since 2.2.361; `GET /health` answers like it too.

Tests run it in-process and flip `AnalyzerState` (stall, fail, count); the
command line serves it for `scripts/presidio-dev` and the benchmark:

    python -m tests.fakes.presidio_server --host 127.0.0.1 --port 5002
"""

from __future__ import annotations

import argparse
import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer
from presidio_analyzer import AnalyzerEngine

from gatewayd.guardrails.filters.presidio import PresidioFilter


@dataclass
class AnalyzerState:
    """Test hooks: what the server does next and what it has received so far."""

    # Seconds to sleep before answering /analyze and /health.
    stall: float = 0.0
    # When set, /analyze and /health answer with this status instead.
    fail_status: int | None = None
    # When set, /analyze answers 200 with this body instead of results.
    body: bytes | None = None
    calls: int = 0
    texts: int = 0
    # The texts of the latest /analyze call.
    last_texts: list[str] = field(default_factory=list)


@dataclass
class Analyzer:
    """A running analyzer as tests see it: base URL, hooks and server."""

    url: str
    state: AnalyzerState
    server: TestServer


# The tests' fixture that starts PresidioFilters: config overrides as keywords.
StartFilter = Callable[..., Awaitable[PresidioFilter]]

ENGINE = web.AppKey("presidio_engine", AnalyzerEngine)
STATE = web.AppKey("presidio_state", AnalyzerState)


def build_engine() -> AnalyzerEngine:
    """The analyzer with pattern recognizers only; takes about a second, build it once."""
    import tldextract.tldextract
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    # The e-mail recognizer checks domains against the public suffix list; use
    # the copy bundled with tldextract instead of fetching it over the network.
    tldextract.tldextract.TLD_EXTRACTOR.suffix_list_urls = ()
    nlp = NlpEngineProvider(
        nlp_configuration={
            "nlp_engine_name": "no_op",
            "models": [{"lang_code": "en", "model_name": "none"}],
        }
    ).create_engine()
    return AnalyzerEngine(nlp_engine=nlp, supported_languages=["en"])


def make_app(engine: AnalyzerEngine, state: AnalyzerState | None = None) -> web.Application:
    """An aiohttp app serving `engine`; `state` is the tests' handle on it."""
    app = web.Application()
    app[ENGINE] = engine
    app[STATE] = state if state is not None else AnalyzerState()
    app.router.add_post("/analyze", _analyze)
    app.router.add_get("/health", _health)
    return app


async def _health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    await asyncio.sleep(state.stall)
    if state.fail_status is not None:
        return web.json_response({"error": "failing on purpose"}, status=state.fail_status)
    return web.Response(text="Presidio Analyzer service is up")


async def _analyze(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        payload = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return _error("Failed to parse /analyze request", 400)
    text = payload.get("text")
    batch = text if isinstance(text, list) else [text]
    if not text or not all(isinstance(t, str) for t in batch):
        return _error("No text provided", 500)
    language = payload.get("language")
    if language not in request.app[ENGINE].supported_languages:
        return _error("No matching recognizers were found to serve the request.", 500)
    state.calls += 1
    state.texts += len(batch)
    state.last_texts = list(batch)
    await asyncio.sleep(state.stall)
    if state.fail_status is not None:
        return _error("failing on purpose", state.fail_status)
    if state.body is not None:
        return web.Response(body=state.body, content_type="application/json")
    analyze = functools.partial(
        _analyze_texts,
        request.app[ENGINE],
        batch,
        language=language,
        entities=payload.get("entities"),
        score_threshold=payload.get("score_threshold"),
        allow_list=payload.get("allow_list"),
    )
    # The engine is CPU-bound; a worker thread keeps /health answering meanwhile.
    results = await asyncio.get_running_loop().run_in_executor(None, analyze)
    body = results if isinstance(text, list) else results[0]
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def _analyze_texts(
    engine: AnalyzerEngine, texts: list[str], **params: Any
) -> list[list[dict[str, Any]]]:
    return [
        [
            {
                "entity_type": r.entity_type,
                "start": r.start,
                "end": r.end,
                "score": r.score,
                "analysis_explanation": None,
            }
            for r in engine.analyze(text=text, **params)
        ]
        for text in texts
    ]


def _error(message: str, status: int) -> web.Response:
    return web.json_response({"error": message}, status=status)


def main(argv: list[str] | None = None) -> None:
    """Serve the analyzer on --host/--port until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5002)
    args = parser.parse_args(argv)
    import uvloop

    web.run_app(
        make_app(build_engine()), host=args.host, port=args.port, loop=uvloop.new_event_loop()
    )


if __name__ == "__main__":
    main()
