"""The OpenAI API endpoints a guarded route knows, and the shape of each.

An endpoint is found by method and the end of the upstream path (so
`/v1/chat/completions`, `/openai/deployments/x/chat/completions` and a
stripped prefix all name the same one). Each says how its request body comes
(JSON, multipart form, none), the shape of that body, the shape of a whole
answer, and which stream format its SSE answers use. A request to any other
endpoint on a guarded route is unknown: the policy's `unknown` decides.

The shapes list every field of the current API reference; docs/guardrails.md
has the same tables in prose. A field added upstream later is unknown until
it is listed here: refused by default, never forwarded unread.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from gatewayd.guardrails.shapes import (
    DEEP,
    JSON_TEXT,
    KEEP,
    MEDIA,
    NUMBER,
    OPAQUE,
    TEXT,
    URL,
    Either,
    ListOf,
    Node,
    Obj,
    Parts,
    Tagged,
)


class Body(enum.Enum):
    """How an endpoint's request body comes."""

    JSON = "json"
    MULTIPART = "multipart"
    NONE = "none"


class Stream(enum.Enum):
    """The event format of an endpoint's SSE answers."""

    CHAT = "chat"
    RESPONSES = "responses"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """What a guard needs to know about one API endpoint."""

    # A fixed word for audit and messages: "chat.completions".
    name: str
    body: Body
    # The JSON body's shape, or the multipart form's text fields.
    request: Node | None
    # A whole answer's shape; None when the answer carries no model text
    # (metadata, or audio the gateway cannot read).
    answer: Node | None
    stream: Stream | None = None
    # A chat stream's chunk shape (a Responses stream's are RESPONSE_EVENTS).
    chunk: Node | None = None
    # The answer is a file the gateway cannot read (file content): refused
    # per `unknown` when output filters would have to read it.
    opaque_answer: bool = False


# --- chat completions --------------------------------------------------------

_TEXT_PART = Obj({"type": KEEP, "text": TEXT})
_REFUSAL_PART = Obj({"type": KEEP, "refusal": TEXT})
_CHAT_PARTS = Parts(
    Tagged(
        "type",
        {
            "text": _TEXT_PART,
            "refusal": _REFUSAL_PART,
            "image_url": Obj({"type": KEEP, "image_url": Obj({"url": URL, "detail": KEEP})}),
            "input_audio": Obj({"type": KEEP, "input_audio": Obj({"data": MEDIA, "format": KEEP})}),
            "file": Obj(
                {
                    "type": KEEP,
                    "file": Obj({"file_data": MEDIA, "file_id": KEEP, "filename": TEXT}),
                }
            ),
        },
    ),
    frozenset({"text"}),
)
_CHAT_CONTENT = Either(str=TEXT, list=_CHAT_PARTS)
_FUNCTION_CALL = Obj({"name": TEXT, "arguments": JSON_TEXT})
_TOOL_CALL = Obj(
    {
        "index": NUMBER,
        "id": KEEP,
        "type": KEEP,
        "function": _FUNCTION_CALL,
        "custom": Obj({"name": TEXT, "input": TEXT}),
    }
)
_MESSAGE_BASE = {"role": KEEP, "content": _CHAT_CONTENT, "name": TEXT}
_CHAT_MESSAGE = Tagged(
    "role",
    {
        "system": Obj(_MESSAGE_BASE),
        "developer": Obj(_MESSAGE_BASE),
        "user": Obj(_MESSAGE_BASE),
        "assistant": Obj(
            {
                **_MESSAGE_BASE,
                "refusal": TEXT,
                "tool_calls": ListOf(_TOOL_CALL),
                "function_call": _FUNCTION_CALL,
                "audio": Obj({"id": KEEP}),
                # What reasoning models (vLLM, DeepSeek) send back in history.
                "reasoning_content": TEXT,
                "reasoning": TEXT,
            }
        ),
        "tool": Obj({**_MESSAGE_BASE, "tool_call_id": KEEP}),
        "function": Obj(_MESSAGE_BASE),
    },
)

# Sampling parameters of OpenAI and of the common OpenAI-compatible servers
# (vLLM, llama.cpp, Ollama): numbers and flags only.
_SAMPLING = {
    name: NUMBER
    for name in (
        "frequency_penalty",
        "presence_penalty",
        "temperature",
        "top_p",
        "seed",
        "n",
        "max_tokens",
        "max_completion_tokens",
        "logprobs",
        "top_logprobs",
        "stream",
        "store",
        "parallel_tool_calls",
        "top_k",
        "min_p",
        "repetition_penalty",
        "min_tokens",
    )
}
_COMMON = {
    "model": KEEP,
    "user": TEXT,
    "safety_identifier": TEXT,
    "prompt_cache_key": TEXT,
    "metadata": DEEP,
    "service_tier": KEEP,
    "stream_options": Obj({"include_usage": NUMBER, "include_obfuscation": NUMBER}),
    **_SAMPLING,
}

CHAT_REQUEST = Obj(
    {
        **_COMMON,
        "messages": ListOf(_CHAT_MESSAGE),
        "audio": Obj({"voice": KEEP, "format": KEEP}),
        "modalities": ListOf(KEEP),
        "reasoning_effort": KEEP,
        "verbosity": KEEP,
        "logit_bias": DEEP,
        "stop": Either(str=TEXT, list=ListOf(TEXT)),
        "tools": ListOf(DEEP),
        "tool_choice": Either(str=KEEP, dict=DEEP),
        "functions": ListOf(DEEP),
        "function_call": Either(str=KEEP, dict=DEEP),
        "response_format": DEEP,
        "prediction": Obj({"type": KEEP, "content": _CHAT_CONTENT}),
        "web_search_options": DEEP,
    }
)

_USAGE = DEEP
_ANSWER_MESSAGE = Obj(
    {
        "role": KEEP,
        "content": TEXT,
        "refusal": TEXT,
        "tool_calls": ListOf(_TOOL_CALL),
        "function_call": _FUNCTION_CALL,
        "audio": Obj({"id": KEEP, "data": MEDIA, "expires_at": NUMBER, "transcript": TEXT}),
        "annotations": DEEP,
        "reasoning_content": TEXT,
        "reasoning": TEXT,
    }
)
_ANSWER_HEAD = {
    "id": KEEP,
    "object": KEEP,
    "created": NUMBER,
    "model": KEEP,
    "system_fingerprint": KEEP,
    "service_tier": KEEP,
    "usage": _USAGE,
}
_CHOICE_TAIL = {
    "index": NUMBER,
    "finish_reason": KEEP,
    # vLLM's stop reason is a token id or the stop string.
    "stop_reason": Either(str=TEXT),
    # Tokens of the answer one by one: no filter can read a value spread
    # over them, so an answer carrying them is unknown.
    "logprobs": OPAQUE,
}
CHAT_ANSWER = Obj(
    {**_ANSWER_HEAD, "choices": ListOf(Obj({**_CHOICE_TAIL, "message": _ANSWER_MESSAGE}))}
)
CHAT_CHUNK = Obj(
    {
        **_ANSWER_HEAD,
        "obfuscation": KEEP,
        "choices": ListOf(Obj({**_CHOICE_TAIL, "delta": _ANSWER_MESSAGE})),
        # An upstream's error mid-stream.
        "error": DEEP,
    }
)

# --- completions, embeddings, moderations ------------------------------------

# A string, strings, or token ids (which carry no text), flat or one list per prompt.
_PROMPT = Either(str=TEXT, list=ListOf(Either(str=TEXT, num=NUMBER, list=ListOf(NUMBER))))

COMPLETIONS_REQUEST = Obj(
    {
        **_COMMON,
        "prompt": _PROMPT,
        "suffix": TEXT,
        "best_of": NUMBER,
        "echo": NUMBER,
        "logit_bias": DEEP,
        "stop": Either(str=TEXT, list=ListOf(TEXT)),
    }
)
COMPLETIONS_ANSWER = Obj({**_ANSWER_HEAD, "choices": ListOf(Obj({**_CHOICE_TAIL, "text": TEXT}))})
# A streamed completion chunk has the whole answer's shape.
COMPLETIONS_CHUNK = COMPLETIONS_ANSWER.extend(error=DEEP)

EMBEDDINGS_REQUEST = Obj(
    {
        "model": KEEP,
        "input": _PROMPT,
        "dimensions": NUMBER,
        "encoding_format": KEEP,
        "user": TEXT,
    }
)
MODERATIONS_REQUEST = Obj(
    {
        "model": KEEP,
        "input": Either(
            str=TEXT,
            list=ListOf(
                Either(
                    str=TEXT,
                    dict=Tagged(
                        "type",
                        {
                            "text": _TEXT_PART,
                            "image_url": Obj({"type": KEEP, "image_url": Obj({"url": URL})}),
                        },
                    ),
                )
            ),
        ),
    }
)

# --- images and audio --------------------------------------------------------

_IMAGE_OPTIONS = {
    name: KEEP
    for name in (
        "model",
        "n",
        "quality",
        "response_format",
        "size",
        "style",
        "background",
        "moderation",
        "output_compression",
        "output_format",
        "partial_images",
        "input_fidelity",
        "stream",
    )
}
# A generation's JSON body, and an edit's form fields: its `image` and `mask`
# are files, media to the gateway.
IMAGES_REQUEST = Obj({**_IMAGE_OPTIONS, "prompt": TEXT, "user": TEXT})
IMAGES_ANSWER = Obj(
    {
        "created": NUMBER,
        "data": ListOf(Obj({"b64_json": MEDIA, "url": KEEP, "revised_prompt": TEXT})),
        "usage": _USAGE,
        **{name: KEEP for name in ("background", "output_format", "quality", "size")},
    }
)
SPEECH_REQUEST = Obj(
    {
        "model": KEEP,
        "input": TEXT,
        "voice": KEEP,
        "instructions": TEXT,
        "response_format": KEEP,
        "speed": NUMBER,
        "stream_format": KEEP,
    }
)
TRANSCRIPTION_FORM = Obj(
    {
        "model": KEEP,
        "prompt": TEXT,
        "language": KEEP,
        "response_format": KEEP,
        "temperature": KEEP,
        "timestamp_granularities[]": KEEP,
        "include[]": KEEP,
        "chunking_strategy": KEEP,
        "stream": KEEP,
    }
)
_SEGMENT = Obj(
    {
        "id": NUMBER,
        "seek": NUMBER,
        "start": NUMBER,
        "end": NUMBER,
        "text": TEXT,
        "tokens": ListOf(NUMBER),
        "temperature": NUMBER,
        "avg_logprob": NUMBER,
        "compression_ratio": NUMBER,
        "no_speech_prob": NUMBER,
    }
)
TRANSCRIPTION_ANSWER = Obj(
    {
        "text": TEXT,
        "task": KEEP,
        "language": KEEP,
        "duration": NUMBER,
        "usage": _USAGE,
        "words": ListOf(Obj({"word": TEXT, "start": NUMBER, "end": NUMBER})),
        "segments": ListOf(_SEGMENT),
        "logprobs": OPAQUE,
    }
)

# --- files and batches ---------------------------------------------------------

FILES_FORM = Obj({"purpose": KEEP, "expires_after[anchor]": KEEP, "expires_after[seconds]": KEEP})
BATCHES_REQUEST = Obj(
    {
        "input_file_id": KEEP,
        "endpoint": KEEP,
        "completion_window": KEEP,
        "metadata": DEEP,
        "output_expires_after": DEEP,
    }
)

# --- responses ---------------------------------------------------------------

_ANNOTATED_TEXT = Obj({"type": KEEP, "text": TEXT, "annotations": DEEP, "logprobs": OPAQUE})
_RESPONSES_PARTS = Parts(
    Tagged(
        "type",
        {
            "input_text": _TEXT_PART,
            "output_text": _ANNOTATED_TEXT,
            "refusal": _REFUSAL_PART,
            "input_image": Obj({"type": KEEP, "image_url": URL, "file_id": KEEP, "detail": KEEP}),
            "input_file": Obj(
                {
                    "type": KEEP,
                    "file_data": MEDIA,
                    "file_id": KEEP,
                    "file_url": URL,
                    "filename": TEXT,
                }
            ),
            "input_audio": Obj({"type": KEEP, "input_audio": Obj({"data": MEDIA, "format": KEEP})}),
        },
    ),
    frozenset({"input_text", "output_text"}),
)
_ITEM_HEAD = {"type": KEEP, "id": KEEP, "status": KEEP}
_RESPONSES_MESSAGE = Obj(
    {**_ITEM_HEAD, "role": KEEP, "content": Either(str=TEXT, list=_RESPONSES_PARTS)}
)
_SUMMARY = ListOf(Obj({"type": KEEP, "text": TEXT}))
_ITEMS = Tagged(
    "type",
    {
        "message": _RESPONSES_MESSAGE,
        "function_call": Obj({**_ITEM_HEAD, "call_id": KEEP, "name": TEXT, "arguments": JSON_TEXT}),
        "function_call_output": Obj(
            {**_ITEM_HEAD, "call_id": KEEP, "output": Either(str=TEXT, list=_RESPONSES_PARTS)}
        ),
        "custom_tool_call": Obj({**_ITEM_HEAD, "call_id": KEEP, "name": TEXT, "input": TEXT}),
        "custom_tool_call_output": Obj(
            {**_ITEM_HEAD, "call_id": KEEP, "output": Either(str=TEXT, list=_RESPONSES_PARTS)}
        ),
        "reasoning": Obj(
            {
                **_ITEM_HEAD,
                "summary": _SUMMARY,
                "content": _SUMMARY,
                # Encrypted for the provider; nothing a person or filter can read.
                "encrypted_content": MEDIA,
            }
        ),
        "item_reference": Obj({"type": KEEP, "id": KEEP}),
    },
    default=_RESPONSES_MESSAGE,
)
_RESPONSES_SHARED = {
    "instructions": Either(str=TEXT, list=ListOf(_ITEMS)),
    "background": NUMBER,
    "conversation": Either(str=KEEP, dict=DEEP),
    "max_output_tokens": NUMBER,
    "max_tool_calls": NUMBER,
    "previous_response_id": KEEP,
    "prompt": DEEP,
    "reasoning": DEEP,
    "text": DEEP,
    "tools": ListOf(DEEP),
    "tool_choice": Either(str=KEEP, dict=DEEP),
    "truncation": KEEP,
}
RESPONSES_REQUEST = Obj(
    {
        **_COMMON,
        **_RESPONSES_SHARED,
        "input": Either(str=TEXT, list=ListOf(_ITEMS)),
        "include": ListOf(KEEP),
    }
)
RESPONSE = Obj(
    {
        **_COMMON,
        **_RESPONSES_SHARED,
        "id": KEEP,
        "object": KEEP,
        "created_at": NUMBER,
        "completed_at": NUMBER,
        "status": KEEP,
        "error": DEEP,
        "incomplete_details": DEEP,
        "output": ListOf(_ITEMS),
        "output_text": TEXT,
        "usage": _USAGE,
        "billing": DEEP,
    }
)
RESPONSES_INPUT_ITEMS = Obj(
    {
        "object": KEEP,
        "data": ListOf(_ITEMS),
        "first_id": KEEP,
        "last_id": KEEP,
        "has_more": NUMBER,
    }
)

_EVENT = {
    "type": KEEP,
    "sequence_number": NUMBER,
    "item_id": KEEP,
    "output_index": NUMBER,
    "content_index": NUMBER,
    "summary_index": NUMBER,
    "obfuscation": KEEP,
    "logprobs": OPAQUE,
}
_RESPONSE_EVENT = Obj({**_EVENT, "response": RESPONSE})
_PART_EVENT = Obj({**_EVENT, "part": _RESPONSES_PARTS.variants})
_SUMMARY_PART_EVENT = Obj({**_EVENT, "part": Obj({"type": KEEP, "text": TEXT})})
# Text that streams in `delta` events, and the key its `.done` event repeats it under.
DELTA_EVENTS = {
    "response.output_text": "text",
    "response.refusal": "refusal",
    "response.function_call_arguments": "arguments",
    "response.custom_tool_call_input": "input",
    "response.reasoning_summary_text": "text",
    "response.reasoning_text": "text",
    "response.audio.transcript": None,
}
JSON_DELTA_EVENTS = frozenset({"response.function_call_arguments"})
RESPONSE_EVENTS: dict[str, Node] = {
    **{
        f"response.{state}": _RESPONSE_EVENT
        for state in ("created", "in_progress", "completed", "failed", "incomplete", "queued")
    },
    "response.output_item.added": Obj({**_EVENT, "item": _ITEMS}),
    "response.output_item.done": Obj({**_EVENT, "item": _ITEMS}),
    "response.content_part.added": _PART_EVENT,
    "response.content_part.done": _PART_EVENT,
    "response.reasoning_summary_part.added": _SUMMARY_PART_EVENT,
    "response.reasoning_summary_part.done": _SUMMARY_PART_EVENT,
    "response.output_text.annotation.added": Obj(
        {**_EVENT, "annotation_index": NUMBER, "annotation": DEEP}
    ),
    **{f"{kind}.delta": Obj({**_EVENT, "delta": TEXT}) for kind in DELTA_EVENTS},
    **{
        f"{kind}.done": Obj(
            {
                **_EVENT,
                **({done: JSON_TEXT if kind in JSON_DELTA_EVENTS else TEXT} if done else {}),
                "name": TEXT,
            }
        )
        for kind, done in DELTA_EVENTS.items()
    },
    "error": Obj(
        {"type": KEEP, "sequence_number": NUMBER, "code": KEEP, "message": TEXT, "param": KEEP}
    ),
}

# --- the table -----------------------------------------------------------------

_ID = r"[^/]+"


def _e(
    name: str,
    body: Body,
    request: Node | None,
    answer: Node | None,
    stream: Stream | None = None,
    *,
    chunk: Node | None = None,
    opaque_answer: bool = False,
) -> Endpoint:
    return Endpoint(name, body, request, answer, stream, chunk, opaque_answer)


_NONE = Body.NONE
CHAT_COMPLETIONS = _e(
    "chat.completions", Body.JSON, CHAT_REQUEST, CHAT_ANSWER, Stream.CHAT, chunk=CHAT_CHUNK
)
_TABLE: tuple[tuple[str, str, Endpoint], ...] = (
    ("POST", "chat/completions", CHAT_COMPLETIONS),
    ("GET", f"chat/completions/{_ID}", _e("chat.completions.get", _NONE, None, CHAT_ANSWER)),
    (
        "POST",
        "completions",
        _e(
            "completions",
            Body.JSON,
            COMPLETIONS_REQUEST,
            COMPLETIONS_ANSWER,
            Stream.CHAT,
            chunk=COMPLETIONS_CHUNK,
        ),
    ),
    ("POST", "embeddings", _e("embeddings", Body.JSON, EMBEDDINGS_REQUEST, None)),
    ("POST", "moderations", _e("moderations", Body.JSON, MODERATIONS_REQUEST, None)),
    (
        "POST",
        "responses",
        _e("responses", Body.JSON, RESPONSES_REQUEST, RESPONSE, Stream.RESPONSES),
    ),
    ("GET", f"responses/{_ID}", _e("responses.get", _NONE, None, RESPONSE, Stream.RESPONSES)),
    ("DELETE", f"responses/{_ID}", _e("responses.delete", _NONE, None, None)),
    ("POST", f"responses/{_ID}/cancel", _e("responses.cancel", _NONE, None, RESPONSE)),
    (
        "GET",
        f"responses/{_ID}/input_items",
        _e("responses.input_items", _NONE, None, RESPONSES_INPUT_ITEMS),
    ),
    (
        "POST",
        "images/generations",
        _e("images.generations", Body.JSON, IMAGES_REQUEST, IMAGES_ANSWER),
    ),
    ("POST", "images/edits", _e("images.edits", Body.MULTIPART, IMAGES_REQUEST, IMAGES_ANSWER)),
    ("POST", "audio/speech", _e("audio.speech", Body.JSON, SPEECH_REQUEST, None)),
    (
        "POST",
        "audio/transcriptions",
        _e("audio.transcriptions", Body.MULTIPART, TRANSCRIPTION_FORM, TRANSCRIPTION_ANSWER),
    ),
    (
        "POST",
        "audio/translations",
        _e("audio.translations", Body.MULTIPART, TRANSCRIPTION_FORM, TRANSCRIPTION_ANSWER),
    ),
    ("POST", "files", _e("files.create", Body.MULTIPART, FILES_FORM, None)),
    ("GET", "files", _e("files.list", _NONE, None, None)),
    ("GET", f"files/{_ID}", _e("files.get", _NONE, None, None)),
    ("DELETE", f"files/{_ID}", _e("files.delete", _NONE, None, None)),
    ("GET", f"files/{_ID}/content", _e("files.content", _NONE, None, None, opaque_answer=True)),
    ("POST", "batches", _e("batches.create", Body.JSON, BATCHES_REQUEST, None)),
    ("GET", "batches", _e("batches.list", _NONE, None, None)),
    ("GET", f"batches/{_ID}", _e("batches.get", _NONE, None, None)),
    ("POST", f"batches/{_ID}/cancel", _e("batches.cancel", _NONE, None, None)),
    ("GET", "models", _e("models.list", _NONE, None, None)),
    ("GET", "models/.+", _e("models.get", _NONE, None, None)),
)

# One alternation per method, each endpoint's path a named group: one
# search finds the endpoint whatever the route's prefix.
_BY_METHOD: dict[str, tuple[re.Pattern[str], dict[str, Endpoint]]] = {}
for _method in sorted({m for m, _, _ in _TABLE}):
    _rows = [(p, e) for m, p, e in _TABLE if m == _method]
    _groups = {f"e{i}": e for i, (_, e) in enumerate(_rows)}
    _pattern = "|".join(f"(?P<e{i}>{p})" for i, (p, _) in enumerate(_rows))
    _BY_METHOD[_method] = (re.compile(rf"(?:^|/)(?:{_pattern})/?$"), _groups)


def find(method: str, path: str) -> Endpoint | None:
    """The endpoint `method` and the upstream `path` name, or None if it is unknown."""
    entry = _BY_METHOD.get(method)
    if entry is None:
        return None
    pattern, groups = entry
    match = pattern.search(path)
    if match is None or match.lastgroup is None:
        return None
    return groups[match.lastgroup]


def by_url(url: str) -> Endpoint | None:
    """The endpoint a batch line's `url` (`/v1/chat/completions`) names."""
    return find("POST", url)
