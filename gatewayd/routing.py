"""Path normalisation and longest-prefix route matching.

A route's policy must not be escapable by spelling a path differently, so
matching happens on one canonical form: percent-encoded unreserved characters
decoded (RFC 3986 section 6.2.2.2), dot segments resolved, duplicate slashes
folded. An encoded slash would let a path mean two things to two parsers and
is refused outright, and so is any request target but a path: the gateway is
no forward proxy, and aiohttp would report only the path of an absolute URL
(`POST http://host/v1/...`), so the route would be matched on one string and
audited as another.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from gatewayd.config.schema import RouteConfig
from gatewayd.errors import BadRequest

_ENCODED_SLASH = re.compile(r"%2f|%5c", re.IGNORECASE)
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _decode_unreserved(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else match.group(0).upper()


def normalize_path(raw: str) -> str:
    """The canonical form of a raw (still percent-encoded) request path.

    Raises BadRequest for a target that is not a path (absolute-form,
    asterisk-form), encoded slashes, or dot segments that climb above the root.
    """
    if not raw.startswith("/"):
        raise BadRequest(
            "the request target must be a path: the gateway is not a forward proxy",
            code="invalid_request_target",
        )
    if "%" in raw:
        if _ENCODED_SLASH.search(raw):
            raise BadRequest("encoded slashes are not allowed in the path", code="invalid_path")
        raw = _PERCENT.sub(_decode_unreserved, raw)
    if "//" not in raw and "/." not in raw:
        return raw
    segments: list[str] = []
    for segment in raw.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if not segments:
                raise BadRequest("the path climbs above the root", code="invalid_path")
            segments.pop()
            continue
        segments.append(segment)
    trailing = "/" if raw.endswith(("/", "/.", "/..")) and segments else ""
    return "/" + "/".join(segments) + trailing


@dataclass(frozen=True, slots=True)
class Match:
    route: RouteConfig
    # What is appended to the upstream URL's path: the whole path, or the
    # path minus the prefix when the route strips it (always starts with "/").
    upstream_path: str


class RouteTable:
    """Routes by prefix; the longest matching prefix wins."""

    __slots__ = ("_routes",)

    def __init__(self, routes: Iterable[RouteConfig]) -> None:
        self._routes = sorted(routes, key=lambda r: len(r.prefix), reverse=True)

    def match(self, path: str) -> Match | None:
        """The route for a normalised path, or None (the caller answers 404)."""
        for route in self._routes:
            prefix = route.prefix
            base = prefix.rstrip("/")
            # "/v1" and "/v1/" both match "/v1" and "/v1/...", never "/v1beta".
            if path == base or path.startswith(base + "/") or prefix == "/":
                rest = path[len(base) :] if route.strip_prefix else path
                if not rest.startswith("/"):
                    rest = "/" + rest
                return Match(route, rest)
        return None
