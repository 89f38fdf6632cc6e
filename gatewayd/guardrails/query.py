"""A guarded request's query string: read strictly, scanned like the body, written again.

A query reaches the provider as surely as the body does (its logs keep it),
so on a guarded route every parameter's name and value is a text the input
filters read, and what goes upstream is the query as read, encoded again:
raw bytes could be read one way here and another there (`+` as a space or a
plus, a bare name with or without `=`). A query that is not `name=value`
pairs of percent-encoded UTF-8 cannot be read and is refused.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, quote, urlencode

from gatewayd.errors import BadRequest
from gatewayd.guardrails.shapes import Path, TextSlot

_QUERY: Path = ((), "query")


class Query:
    """A query's parameters in order, each a [name, value] pair the filters may change."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: list[list[str]]) -> None:
        self.pairs = pairs

    @property
    def slots(self) -> list[TextSlot]:
        """A slot for every name and value; the location never quotes either."""
        slots = []
        for i, pair in enumerate(self.pairs):
            at = (_QUERY, i)
            slots.append(TextSlot(pair, 0, (at, "name")))
            slots.append(TextSlot(pair, 1, (at, "value")))
        return slots

    def dump(self) -> str:
        """The query again, percent-encoded, with the texts as the filters left them."""
        return urlencode([(name, value) for name, value in self.pairs], quote_via=quote)


def read_query(raw: str) -> Query:
    """The parameters of `raw` (without the `?`), or BadRequest when it cannot be read."""
    try:
        pairs = parse_qsl(
            raw, keep_blank_values=True, strict_parsing=True, encoding="utf-8", errors="strict"
        )
    except (ValueError, UnicodeDecodeError) as exc:
        # The query is the sender's text: the message does not quote it.
        raise BadRequest(
            "the query string cannot be read: it must be name=value pairs of percent-encoded UTF-8",
            code="invalid_query",
        ) from exc
    return Query([[name, value] for name, value in pairs])
