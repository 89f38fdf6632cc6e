"""Request bodies as their endpoint takes them: JSON, multipart forms, uploads, nothing."""

from __future__ import annotations

import orjson
import pytest

from gatewayd.config.schema import Mode, PolicyConfig
from gatewayd.errors import BadRequest
from gatewayd.guardrails import endpoints
from gatewayd.guardrails.endpoints import Endpoint
from gatewayd.guardrails.payload import read_payload
from gatewayd.guardrails.pipeline import Guard

from .fakes import email_filter, phone_filter

BOUNDARY = "----gw7"
FORM = f"multipart/form-data; boundary={BOUNDARY}"


def _endpoint(method: str, path: str) -> Endpoint:
    endpoint = endpoints.find(method, path)
    assert endpoint is not None
    return endpoint


def _form(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> bytes:
    out = b""
    for name, value in fields.items():
        out += f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        out += value.encode() + b"\r\n"
    for name, (filename, data) in files.items():
        out += (
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; "
            f'name="{name}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        out += data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def _guard() -> Guard:
    policy = PolicyConfig(name="p", mode=Mode.REDACT, input=("email", "phone"))
    return Guard(policy, {"email": email_filter(), "phone": phone_filter()})


async def test_a_transcription_prompt_is_redacted_and_the_form_rebuilt() -> None:
    """The `prompt` field of an audio form is read; the audio file goes on byte for byte."""
    audio = bytes(range(256)) * 4
    body = _form({"model": "whisper-1", "prompt": "names: a@x.io"}, {"file": ("a.wav", audio)})
    payload = read_payload(_endpoint("POST", "/v1/audio/transcriptions"), FORM, body)
    result = await _guard().inspect_request(body, payload)
    assert b"a@x.io" not in result.body
    assert b"names: <EMAIL_ADDRESS_1>" in result.body
    assert audio in result.body
    again = read_payload(_endpoint("POST", "/v1/audio/transcriptions"), FORM, result.body)
    assert again.unknown == []
    assert [slot.text for slot in again.slots] == ["names: <EMAIL_ADDRESS_1>"]


async def test_batch_uploads_are_read_line_by_line_as_their_endpoint() -> None:
    """A `purpose: batch` JSONL upload: each line's body is read as the request its url
    names, and a redacted line is written back in place."""
    lines = [
        {
            "custom_id": "1",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "m", "messages": [{"role": "user", "content": "mail a@x.io"}]},
        },
        {
            "custom_id": "2",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "e", "input": "call 555-1234"},
        },
    ]
    data = b"\n".join(orjson.dumps(line) for line in lines)
    body = _form({"purpose": "batch"}, {"file": ("batch.jsonl", data)})
    payload = read_payload(_endpoint("POST", "/v1/files"), FORM, body)
    assert payload.unknown == []
    result = await _guard().inspect_request(body, payload)
    assert b"a@x.io" not in result.body
    assert b"555-1234" not in result.body
    assert b"<EMAIL_ADDRESS_1>" in result.body
    assert b"<PHONE_NUMBER_1>" in result.body


@pytest.mark.parametrize(
    ("fields", "data", "unknown"),
    [
        ({"purpose": "assistants"}, b"%PDF-1.7 a@x.io", ["file"]),
        (
            {"purpose": "batch"},
            orjson.dumps({"custom_id": "1", "method": "POST", "url": "/v1/assistants", "body": {}}),
            ["file[0].url"],
        ),
        (
            {"purpose": "batch"},
            orjson.dumps(
                {"custom_id": "1", "method": "POST", "url": "/v1/embeddings", "body": {"x": "a"}}
            ),
            ["file[0].body.x"],
        ),
        ({"purpose": "fine-tune", "sneaky": "a@x.io"}, b"", ["sneaky"]),
    ],
)
def test_uploads_the_gateway_cannot_read_are_unknown(
    fields: dict[str, str], data: bytes, unknown: list[str]
) -> None:
    """Documents, lines for endpoints without a shape, unknown line or form fields: unknown."""
    body = _form(fields, {"file": ("f", data)})
    assert read_payload(_endpoint("POST", "/v1/files"), FORM, body).unknown == unknown


@pytest.mark.parametrize(
    ("path", "content_type", "body"),
    [
        # A JSON chat body labelled multipart is not forwarded unread.
        ("/v1/chat/completions", FORM, b'{"messages": [{"role": "user", "content": "a@x.io"}]}'),
        ("/v1/audio/transcriptions", "application/json", b'{"prompt": "a@x.io"}'),
        ("/v1/audio/transcriptions", FORM, b'{"prompt": "a@x.io"}'),
        ("/v1/audio/transcriptions", FORM, _form({"prompt": "a", "model": "m"}, {})[:-4]),
        (
            "/v1/audio/transcriptions",
            FORM,
            _form({"prompt": "a"}, {}).replace(b"\r\n\r\na", b"\r\n\r\n\xff"),
        ),
        ("/v1/audio/transcriptions", FORM, _form({"prompt": "a"}, {}) + b"trailing a@x.io"),
        ("/v1/audio/transcriptions", FORM.replace("form-data", "mixed"), _form({}, {})),
        ("/v1/chat/completions", "application/json", b"[1, 2]"),
        ("/v1/chat/completions", "text/plain", b"not json a@x.io"),
    ],
)
def test_bodies_that_are_not_what_the_endpoint_takes_are_refused(
    path: str, content_type: str, body: bytes
) -> None:
    """Mislabelled, truncated, undecodable or trailing-data bodies raise a 400, never pass."""
    with pytest.raises(BadRequest):
        read_payload(_endpoint("POST", path), content_type, body)


@pytest.mark.parametrize(
    "head",
    [
        b'Content-Disposition: form-data; name="prompt"\r\nContent-Transfer-Encoding: base64',
        b'Content-Disposition: form-data; name="prompt"\r\nContent-Type: text/plain; charset=utf-7',
        b'Content-Disposition: form-data; name="prompt"; name="model"',
        b"Content-Disposition: form-data; name*=utf-8''prompt",
        b'X-Before: 1\r\nContent-Disposition: form-data; name="prompt"',
    ],
)
def test_text_fields_the_upstream_could_read_otherwise_are_refused(head: bytes) -> None:
    """Encodings, charsets, second names and unusual headers on a text field are refused:
    the upstream could decode other text than the guard read."""
    body = (
        f"--{BOUNDARY}\r\n".encode()
        + head
        + b"\r\n\r\nYUB4Lmlv\r\n"
        + f"--{BOUNDARY}--\r\n".encode()
    )
    with pytest.raises(BadRequest):
        read_payload(_endpoint("POST", "/v1/audio/transcriptions"), FORM, body)


def test_a_part_may_name_its_content_type_first() -> None:
    """Header order in a part means nothing: aiohttp writes Content-Type before the name."""
    body = (
        f"--{BOUNDARY}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f'Content-Disposition: form-data; name="prompt"\r\n\r\nmail a@x.io\r\n'
        f"--{BOUNDARY}--\r\n"
    ).encode()
    payload = read_payload(_endpoint("POST", "/v1/audio/transcriptions"), FORM, body)
    assert [slot.text for slot in payload.slots] == ["mail a@x.io"]


def test_a_field_given_twice_is_refused() -> None:
    """Two values for one form field: which the upstream takes is its choice, so neither passes."""
    body = _form({"prompt": "a"}, {}).replace(
        f"--{BOUNDARY}--".encode(),
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\n'
            f"b@x.io\r\n--{BOUNDARY}--"
        ).encode(),
    )
    with pytest.raises(BadRequest, match="twice"):
        read_payload(_endpoint("POST", "/v1/audio/transcriptions"), FORM, body)


def test_a_body_on_an_endpoint_that_takes_none_is_refused() -> None:
    """A GET or DELETE carrying a body would smuggle text past the guard."""
    with pytest.raises(BadRequest, match="takes no request body"):
        read_payload(_endpoint("GET", "/v1/models"), "application/json", b'{"q": "a@x.io"}')
    assert read_payload(_endpoint("GET", "/v1/models"), "", b"").slots == []
