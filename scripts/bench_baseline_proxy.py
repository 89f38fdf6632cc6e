"""The performance bar from DESIGN.md: the simplest useful aiohttp proxy.

It reads the body, parses it with orjson, runs one e-mail regex over the
message text and forwards the original bytes through one pooled session.
gatewayd with every feature on must serve at least as many requests per core.

    python scripts/bench_baseline_proxy.py --port 8090 --upstream http://127.0.0.1:8091
"""

from __future__ import annotations

import argparse
import re
from collections.abc import AsyncIterator

import aiohttp
import orjson
import uvloop
from aiohttp import web

EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


def message_text(payload: object) -> str:
    """The string contents of a chat request's messages, joined."""
    if not isinstance(payload, dict):
        return ""
    messages = payload.get("messages")
    if not isinstance(messages, list):
        return ""
    return "\n".join(
        m["content"] for m in messages if isinstance(m, dict) and isinstance(m.get("content"), str)
    )


async def forward(request: web.Request) -> web.Response:
    """Parse, scan once, and pass the request on unchanged."""
    body = await request.read()
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return web.json_response({"error": {"message": "invalid JSON"}}, status=400)
    # The finding is not acted on: the bar is the cost of looking.
    EMAIL.search(message_text(payload))
    headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
    async with request.app[SESSION].request(
        request.method, request.app[UPSTREAM] + request.path_qs, data=body, headers=headers
    ) as upstream:
        answer = await upstream.read()
        return web.Response(body=answer, status=upstream.status, content_type=upstream.content_type)


async def session_ctx(app: web.Application) -> AsyncIterator[None]:
    """One pooled client session for the app's lifetime."""
    app[SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
    yield
    await app[SESSION].close()


def main() -> None:
    """Serve the baseline proxy until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:8091")
    args = parser.parse_args()
    app = web.Application()
    app[UPSTREAM] = args.upstream.rstrip("/")
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
    web.run_app(
        app,
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
