"""Which headers cross the proxy, in each direction (RFC 9110 section 7.6.1)."""

from __future__ import annotations

import random
import re
from typing import TYPE_CHECKING

from multidict import CIMultiDict, CIMultiDictProxy

if TYPE_CHECKING:
    # Only a type here: the config builder imports this module's header sets.
    from gatewayd.config.schema import UpstreamConfig

# Hop-by-hop: meaningful for one connection only, never forwarded.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

# Not hop-by-hop, but the gateway sets them itself: Host from the upstream
# URL, Authorization from the upstream's key (the client's is never sent on),
# Content-Length from the body it actually forwards. That body is always the
# decoded one (aiohttp inflates gzip/deflate request bodies, and the guardrails
# read and the size limit counts the text), so its Content-Encoding goes too.
GATEWAY_SET = frozenset({"host", "authorization", "content-length", "content-encoding", "expect"})

# Other APIs' keys, and the selectors of who pays: a client must not send
# its own credentials beside the gateway's key, nor choose which of the
# key's organisations or projects is billed. Back from the upstream they
# would name the gateway's account, so they are dropped both ways.
CREDENTIALS = frozenset(
    {
        "api-key",  # Azure OpenAI
        "x-api-key",  # Anthropic, AWS API Gateway
        "x-goog-api-key",  # Gemini
        "ocp-apim-subscription-key",  # Azure API Management
        "openai-organization",
        "openai-project",
        "x-goog-user-project",  # the Google Cloud project billed
        "cookie",
    }
)

# Precomputed once: the request path only walks these tuples.
_REQUEST_DROP = tuple(HOP_BY_HOP | GATEWAY_SET | CREDENTIALS)
# The upstream's cookies and any key it echoes stay at the gateway too.
_RESPONSE_DROP = tuple(
    HOP_BY_HOP | CREDENTIALS | {"authorization", "set-cookie", "content-length", "server", "date"}
)

REQUEST_ID = "X-Request-Id"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def _filter(
    headers: CIMultiDictProxy[str] | CIMultiDict[str], owned: tuple[str, ...]
) -> CIMultiDict[str]:
    # Copying whole and deleting the few present is several times faster
    # than rebuilding from a filtered generator.
    out = CIMultiDict(headers)
    if "Connection" in out:
        for value in out.getall("Connection"):
            for token in value.split(","):
                out.popall(token.strip(), None)
    for name in owned:
        if name in out:
            del out[name]
    return out


def upstream_request_headers(
    headers: CIMultiDictProxy[str], request_id: str, upstream: UpstreamConfig
) -> CIMultiDict[str]:
    """The client's headers as they may go upstream: without the upstream's
    drop_headers, with its configured headers (replacing the client's) and our request id."""
    out = _filter(headers, _REQUEST_DROP)
    for name in upstream.drop_headers:
        out.popall(name, None)
    for name, value in upstream.headers:
        out[name] = value
    out[REQUEST_ID] = request_id
    return out


def client_response_headers(
    headers: CIMultiDictProxy[str], upstream: UpstreamConfig
) -> CIMultiDict[str]:
    """The upstream's response headers as they may go back to the client; the
    headers configured for the upstream are its credentials, never echoed back."""
    out = _filter(headers, _RESPONSE_DROP)
    for name, _ in upstream.headers:
        out.popall(name, None)
    return out


def request_id_from(headers: CIMultiDictProxy[str]) -> str:
    """The client's X-Request-Id when it is sane (short, no odd characters), else a new one."""
    given = headers.get(REQUEST_ID)
    if given is not None and _SANE_REQUEST_ID.fullmatch(given):
        return given
    # Unique, not secret: no need to pay a getrandom() syscall per request.
    return f"{random.getrandbits(128):032x}"
