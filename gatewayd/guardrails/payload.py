"""A guarded request's body as its endpoint says it comes: JSON, a multipart form, or none.

`read_payload` parses the body once, walks it with the endpoint's shape, and
keeps what the guard needs: the texts, the fields nobody knows, and a way to
serialise the body again after a redaction. A body that does not parse as
the endpoint's kind is refused here; it is never forwarded unread.

Uploads carry requests too: a Files API upload with `purpose: batch` is JSONL,
one request per line for the endpoint its `url` names, and `fine-tune` lines
are chat conversations. Each line is walked with that endpoint's shape; any
other uploaded file is media the gateway cannot read.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from gatewayd.errors import BadRequest
from gatewayd.guardrails import endpoints
from gatewayd.guardrails.endpoints import Body, Endpoint
from gatewayd.guardrails.query import Query
from gatewayd.guardrails.shapes import (
    DEEP,
    KEEP,
    TEXT,
    ListOf,
    Obj,
    Path,
    TextSlot,
    Walk,
    walk,
)

_BOUNDARY = re.compile(r'boundary=(?:"([^"]{1,70})"|([^\s;]{1,70}))', re.IGNORECASE)
_DISPOSITION = re.compile(
    rb'content-disposition:\s*form-data\s*;\s*name="([^"]*)"(?:\s*;\s*filename="([^"]*)")?\s*',
    re.IGNORECASE,
)
# A text field's part may say only its name and that it is (UTF-8) text: any
# other header (Content-Transfer-Encoding: base64, a charset) would make the
# upstream read other text than the guard did.
_TEXT_TYPE = re.compile(rb"content-type:\s*text/plain(?:\s*;\s*charset=\"?utf-8\"?)?\s*", re.I)
# Uploads whose lines are requests the gateway reads.
_JSONL_PURPOSES = ("batch", "fine-tune")
_FINE_TUNE_LINE = Obj(
    {
        "messages": endpoints.CHAT_REQUEST.fields["messages"],
        "tools": ListOf(DEEP),
        "functions": ListOf(DEEP),
        "parallel_tool_calls": KEEP,
        # Preference and reinforcement fine-tuning formats.
        "input": DEEP,
        "preferred_output": DEEP,
        "non_preferred_output": DEEP,
    }
)
_BATCH_LINE = {"custom_id": TEXT, "method": KEEP, "url": KEEP}


class Payload:
    """A parsed request body (and, when guarded, its query): its texts, its
    unknown fields, and how to write it back."""

    __slots__ = ("doc", "endpoint", "query", "walked")

    def __init__(self, endpoint: Endpoint, doc: dict[str, Any] | None, walked: Walk) -> None:
        self.endpoint = endpoint
        # The JSON object (model, stream) when the body is one.
        self.doc = doc
        self.walked = walked
        # The request's query string, read when a guard reads the request.
        self.query: Query | None = None

    @property
    def slots(self) -> list[TextSlot]:
        """The body's texts, then the query's names and values."""
        if self.query is None:
            return self.walked.slots
        return [*self.walked.slots, *self.query.slots]

    @property
    def unknown(self) -> list[str]:
        return self.walked.unknown

    def dump(self) -> bytes:
        """The body again, with the texts as the filters left them."""
        return orjson.dumps(self.doc)

    def models(self) -> list[object]:
        """Every model the request asks for (a client's allow-list checks them all)."""
        return [self.doc["model"]] if self.doc is not None and "model" in self.doc else []


class _Empty(Payload):
    __slots__ = ()

    def dump(self) -> bytes:
        return b""


class _Form(Payload):
    """A multipart form: text fields are read; a JSONL upload's lines too."""

    __slots__ = ("_boundary", "_fields", "_lines", "_parts")

    def __init__(
        self,
        endpoint: Endpoint,
        boundary: bytes,
        parts: list[_Part],
        walked: Walk,
        lines: list[Any] | None,
        fields: dict[str, str],
    ) -> None:
        super().__init__(endpoint, None, walked)
        self._boundary = boundary
        self._fields = fields
        self._parts = parts
        # The uploaded JSONL's parsed lines, when the upload is one.
        self._lines = lines

    def dump(self) -> bytes:
        delimiter = b"--" + self._boundary
        out: list[bytes] = []
        for part in self._parts:
            if part.field is not None:
                body = part.fields[part.field].encode()
            elif part.is_upload and self._lines is not None:
                body = b"".join(orjson.dumps(line) + b"\n" for line in self._lines)
            else:
                body = part.body
            out += [delimiter, b"\r\n", part.head, b"\r\n\r\n", body, b"\r\n"]
        out += [delimiter, b"--\r\n"]
        return b"".join(out)

    def models(self) -> list[object]:
        """The form's model field, and each request's of an uploaded batch file."""
        found: list[object] = [self._fields["model"]] if "model" in self._fields else []
        for line in self._lines or ():
            body = line.get("body") if isinstance(line, dict) else None
            if isinstance(body, dict) and "model" in body:
                found.append(body["model"])
        return found


class _Part:
    __slots__ = ("body", "field", "fields", "head", "is_upload")

    def __init__(self, head: bytes, body: bytes) -> None:
        self.head = head
        self.body = body
        self.field: str | None = None
        self.fields: dict[str, str] = {}
        self.is_upload = False


def read_payload(endpoint: Endpoint, content_type: str, body: bytes) -> Payload:
    """Parse `body` as `endpoint` takes it; raises BadRequest when it is not that."""
    multipart = content_type.lower().startswith("multipart/")
    if endpoint.body is Body.NONE:
        if body:
            # A body the endpoint takes none of would reach the upstream unread.
            raise _unsupported(f"{endpoint.name} takes no request body")
        return _Empty(endpoint, None, Walk())
    if endpoint.body is Body.MULTIPART:
        if not content_type.lower().startswith("multipart/form-data"):
            raise _unsupported(f"{endpoint.name} takes a multipart/form-data body")
        return _read_form(endpoint, content_type, body)
    if multipart:
        raise _unsupported(f"{endpoint.name} takes a JSON body, not a multipart form")
    return json_payload(endpoint, parse_json(body))


def json_payload(endpoint: Endpoint, doc: dict[str, Any]) -> Payload:
    """A parsed JSON body of `endpoint`, walked with its shape."""
    assert endpoint.request is not None
    return Payload(endpoint, doc, walk(endpoint.request, doc))


def parse_json(body: bytes) -> dict[str, Any]:
    """A JSON object, or BadRequest invalid_json."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest("the request body is not valid JSON", code="invalid_json") from exc
    if not isinstance(doc, dict):
        raise BadRequest("the request body must be a JSON object", code="invalid_json")
    return doc


def _unsupported(message: str) -> BadRequest:
    return BadRequest(message, code="unsupported_request")


def _read_form(endpoint: Endpoint, content_type: str, body: bytes) -> Payload:
    found = _BOUNDARY.search(content_type)
    if found is None:
        raise BadRequest("the multipart body has no boundary", code="invalid_request")
    boundary = (found.group(1) or found.group(2)).encode()
    parts = _split(body, boundary)
    fields: dict[str, str] = {}
    uploads: list[_Part] = []
    for part in parts:
        # Header order in a part means nothing (RFC 7578): httpx writes the
        # disposition first, aiohttp its Content-Type.
        lines = part.head.split(b"\r\n")
        named = [line for line in lines if line[:20].lower() == b"content-disposition:"]
        disposition = _DISPOSITION.fullmatch(named[0]) if len(named) == 1 else None
        if disposition is None:
            raise BadRequest(
                "a multipart part must carry one form-data name", code="invalid_request"
            )
        others = [line for line in lines if line is not named[0]]
        name = disposition.group(1).decode("utf-8", "replace")
        if disposition.group(2) is not None:
            part.is_upload = True
            uploads.append(part)
            continue
        if any(not _TEXT_TYPE.fullmatch(line) for line in others):
            raise _unsupported(f"the form field {name!r} is not plain UTF-8 text")
        try:
            value = part.body.decode()
        except UnicodeDecodeError as exc:
            raise BadRequest("a form field is not UTF-8 text", code="invalid_request") from exc
        if name in fields:
            # Two values for one field: which one the upstream takes is its choice.
            raise _unsupported(f"the form field {name!r} is given twice")
        fields[name] = value
        part.field = name
        part.fields = fields
    assert endpoint.request is not None
    walked = walk(endpoint.request, fields)
    jsonl = None
    purpose = fields.get("purpose")
    if endpoint.name == "files.create":
        if len(uploads) != 1:
            raise _unsupported("a file upload carries exactly one file")
        if purpose in _JSONL_PURPOSES:
            jsonl = _read_lines(uploads[0].body, purpose, walked)
        else:
            # PDFs, images, documents: nothing the gateway can read.
            walked.odd(((), "file"))
    return _Form(endpoint, boundary, parts, walked, jsonl, fields)


def _split(body: bytes, boundary: bytes) -> list[_Part]:
    """The parts of a multipart body; anything else than parts between delimiters is refused."""
    delimiter = b"--" + boundary
    if not body.startswith(delimiter):
        raise BadRequest(
            "the body is not the multipart form it is labelled", code="invalid_request"
        )
    chunks = body.split(b"\r\n" + delimiter)
    first = chunks[0][len(delimiter) :]
    chunks[0] = first
    parts: list[_Part] = []
    closed = False
    for chunk in chunks:
        if chunk.startswith(b"--"):
            # The closing delimiter; only an epilogue of whitespace may follow.
            if chunk[2:].strip():
                raise BadRequest("data after the multipart body's end", code="invalid_request")
            closed = True
            break
        if not chunk.startswith(b"\r\n"):
            raise BadRequest("a malformed multipart delimiter", code="invalid_request")
        head, sep, content = chunk[2:].partition(b"\r\n\r\n")
        if not sep:
            raise BadRequest("a multipart part has no header end", code="invalid_request")
        parts.append(_Part(head, content))
    if not closed:
        raise BadRequest("the multipart body is not closed", code="invalid_request")
    return parts


def _read_lines(data: bytes, purpose: str, walked: Walk) -> list[Any]:
    """An uploaded JSONL file's lines, each walked with the shape its endpoint gives it."""
    lines: list[Any] = []
    for number, line in enumerate(data.splitlines()):
        if not line.strip():
            continue
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(
                f"line {number + 1} of the uploaded file is not JSON", code="invalid_json"
            ) from exc
        if not isinstance(doc, dict):
            raise BadRequest(
                f"line {number + 1} of the uploaded file is not a JSON object", code="invalid_json"
            )
        lines.append(doc)
        path = (((), "file"), number)
        if purpose == "fine-tune":
            _walk_into(_FINE_TUNE_LINE, doc, path, walked)
            continue
        url = doc.get("url")
        target = endpoints.by_url(url) if isinstance(url, str) else None
        if target is None or target.request is None or target.body is not Body.JSON:
            walked.odd((path, "url"))
            continue
        _walk_into(Obj({**_BATCH_LINE, "body": target.request}), doc, path, walked)
    return lines


def _walk_into(shape: Obj, doc: dict[str, Any], path: Path, out: Walk) -> None:
    shape.walk(doc, None, "", path, out)
