"""A route's upstream, and its fallback when that has nothing to offer.

The fallback is asked only when the route's own upstream ended in a way its
retry.on allows retrying (no connection, a refused status, every target
ejected): nothing that may have reached the model, so asking elsewhere cannot
bill twice. A request the upstream may be processing, or an answer it asked
not to retry (`x-should-retry: false`), goes back to the client as it is.
"""

from __future__ import annotations

from collections.abc import Mapping

from multidict import CIMultiDictProxy

from gatewayd.config.schema import RouteConfig
from gatewayd.errors import UpstreamError
from gatewayd.headers import upstream_request_headers
from gatewayd.upstream.client import Upstream, UpstreamResponse


async def send_routed(
    upstreams: Mapping[str, Upstream],
    route: RouteConfig,
    method: str,
    path_qs: str,
    client_headers: CIMultiDictProxy[str],
    request_id: str,
    body: bytes,
    *,
    identity: bool,
) -> UpstreamResponse:
    """Send to the route's upstream, then to its fallback if the first has none;
    `identity` asks for an uncompressed answer (a guard will read it)."""

    async def send(upstream: Upstream) -> UpstreamResponse:
        # Each upstream gets its own configured headers: the route's upstream's
        # credentials (an Azure api-key, say) never go to the fallback.
        headers = upstream_request_headers(client_headers, request_id, upstream.config)
        if identity:
            headers["Accept-Encoding"] = "identity"
        return await upstream.send(method, path_qs, headers, body)

    fallback = upstreams[route.fallback] if route.fallback is not None else None
    try:
        sent = await send(upstreams[route.upstream])
    except UpstreamError as exc:
        if fallback is None or not exc.retryable:
            raise
        before = exc.attempts
    else:
        if fallback is None or not sent.retryable:
            return sent
        sent.response.release()
        before = sent.attempts
    try:
        answer = await send(fallback)
    except UpstreamError as exc:
        exc.attempts += before
        raise
    answer.attempts += before
    return answer
