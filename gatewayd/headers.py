"""Which headers cross the proxy, in each direction (RFC 9110 section 7.6.1)."""

from __future__ import annotations

import random
import re

from multidict import CIMultiDict, CIMultiDictProxy

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
_REQUEST_DROP = tuple(
    HOP_BY_HOP | {"host", "authorization", "content-length", "content-encoding", "expect"}
)
_RESPONSE_DROP = tuple(HOP_BY_HOP | {"content-length", "server", "date"})

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


def upstream_request_headers(headers: CIMultiDictProxy[str], request_id: str) -> CIMultiDict[str]:
    """The client's headers as they may go upstream, with our request id."""
    out = _filter(headers, _REQUEST_DROP)
    out[REQUEST_ID] = request_id
    return out


def client_response_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """The upstream's response headers as they may go back to the client."""
    return _filter(headers, _RESPONSE_DROP)


def request_id_from(headers: CIMultiDictProxy[str]) -> str:
    """The client's X-Request-Id when it is sane (short, no odd characters), else a new one."""
    given = headers.get(REQUEST_ID)
    if given is not None and _SANE_REQUEST_ID.fullmatch(given):
        return given
    # Unique, not secret: no need to pay a getrandom() syscall per request.
    return f"{random.getrandbits(128):032x}"
