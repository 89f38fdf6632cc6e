"""The shape of an API payload: what the model reads, what it does not, what is unknown.

A shape is a small tree of nodes, built once at import. Walking a parsed
payload with its shape yields a `TextSlot` for every string that reaches the
model (or the provider's logs) and the location of every field the gateway
does not know; the guard refuses or passes those per the policy's `unknown`.

    TEXT        a string the model reads (null allowed)
    JSON_TEXT   a string holding JSON, such as tool-call arguments: restored
                values are escaped for it
    KEEP        a scalar the model does not read as text: ids, enums, model
                names; a string must look like one (no spaces, no `@`)
    NUMBER      a number, a flag or null
    MEDIA       base64 data or a `data:` URL: images and audio cannot be read
    URL         a link: a `data:` URL is media, any other is read as TEXT
    DEEP        any JSON whose every string and object key is read: tool
                schemas, metadata, response formats
    OPAQUE      null, or a value the gateway cannot read (answer logprobs):
                present, it counts as unknown
    Obj(...), ListOf(node), Either(str=..., list=...), Tagged("type", {...}),
    Parts(...)  a content-part list whose adjacent text parts are read as one text

Nothing here quotes a value: a location names the field (`messages[1].content`)
and an unknown key is named only when it looks like an API field name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

Path = tuple[Any, ...]
"""Where a value sits, built as nested pairs (parent path, step) from `()`: a walk
makes one per field, and a pair is cheaper than a copy of the whole path."""

_FIELD_NAME = re.compile(r"[a-z_]{1,40}")
_ID_LIKE = re.compile(r"[\w.:/+\-]{0,256}", re.ASCII)
# Id-like strings already checked; bounded, as ids are many and unique.
_KEPT: set[str] = set()
_KEPT_SIZE = 4096


def steps(path: Path) -> list[str | int]:
    """A path's steps from the root."""
    out: list[str | int] = []
    while path:
        path, step = path
        out.append(step)
    out.reverse()
    return out


def location(path: Path) -> str:
    """A path as `messages[1].content`."""
    parts: list[str] = []
    for step in steps(path):
        if isinstance(step, int):
            parts.append(f"[{step}]")
        else:
            parts.append(f".{step}" if parts else step)
    return "".join(parts)


def _key_name(key: str) -> str:
    # An unknown key is the sender's text: named only when it cannot be a value.
    return key if _FIELD_NAME.fullmatch(key) else "(field)"


class TextSlot:
    """One text inside a parsed payload, with a way to write it back in place."""

    __slots__ = ("json", "key", "parent", "path")

    def __init__(self, parent: Any, key: str | int, path: Path, json: bool = False) -> None:
        self.parent = parent
        self.key = key
        self.path = path
        # The text is JSON itself (tool-call arguments): a value put into it
        # must be escaped as a JSON string's content.
        self.json = json

    @property
    def text(self) -> str:
        """The text as the document holds it now."""
        text: str = self.parent[self.key]
        return text

    def write(self, text: str) -> None:
        """Replace the text in the document."""
        self.parent[self.key] = text

    @property
    def location(self) -> str:
        """The field, as `messages[1].content`."""
        return location(self.path)


class KeySlot(TextSlot):
    """An object key the model reads (a property name in a tool's schema)."""

    __slots__ = ()

    @property
    def text(self) -> str:
        key: str = self.key  # type: ignore[assignment]
        return key

    def write(self, text: str) -> None:
        # Rebuilt in order: a schema's property order is what the model sees.
        old = self.key
        items = [(text if k == old else k, v) for k, v in self.parent.items()]
        self.parent.clear()
        self.parent.update(items)
        self.key = text

    @property
    def location(self) -> str:
        return location(self.path[0]) + ".(key)"


class JoinedSlot(TextSlot):
    """Adjacent text parts the model reads as one text, scanned as one.

    A value split across two parts is found whole; a changed text is written
    into the first part and the others are emptied, which reads the same.
    """

    __slots__ = ("parts",)

    def __init__(self, parts: list[TextSlot]) -> None:
        first = parts[0]
        super().__init__(first.parent, first.key, first.path)
        self.parts = parts

    @property
    def text(self) -> str:
        return "".join(part.text for part in self.parts)

    def write(self, text: str) -> None:
        self.parts[0].write(text)
        for part in self.parts[1:]:
            part.write("")


class Walk:
    """What one walk found: the texts, and the fields nobody knows."""

    __slots__ = ("slots", "unknown")

    def __init__(self) -> None:
        self.slots: list[TextSlot] = []
        self.unknown: list[str] = []

    def odd(self, path: Path) -> None:
        """A value the shape does not allow, at `path`."""
        self.unknown.append(location(path))


class Node:
    """One field's shape; `walk` records the texts under it and what is unknown."""

    __slots__ = ()

    def walk(self, value: Any, parent: Any, key: str | int, path: Path, out: Walk) -> None:
        raise NotImplementedError


class Leaf(Node):
    """A value nothing is read from, only checked: the walk of an object or list
    calls `ok` on it directly, building no path unless the value is odd."""

    __slots__ = ()

    def ok(self, value: Any) -> bool:
        raise NotImplementedError

    def walk(self, value: Any, parent: Any, key: str | int, path: Path, out: Walk) -> None:
        if not self.ok(value):
            out.odd(path)


class _Text(Node):
    __slots__ = ("json",)

    def __init__(self, json: bool = False) -> None:
        self.json = json

    def walk(self, value: Any, parent: Any, key: str | int, path: Path, out: Walk) -> None:
        if isinstance(value, str):
            if value:
                out.slots.append(TextSlot(parent, key, path, self.json))
        elif value is not None:
            out.odd(path)


class _Keep(Leaf):
    __slots__ = ()

    def ok(self, value: Any) -> bool:
        if isinstance(value, str):
            if value in _KEPT:
                return True
            if not _ID_LIKE.fullmatch(value):
                return False
            if len(_KEPT) < _KEPT_SIZE:
                # A stream repeats its id, model and roles in every event.
                _KEPT.add(value)
            return True
        return not isinstance(value, dict | list)


class _Number(Leaf):
    __slots__ = ()

    def ok(self, value: Any) -> bool:
        return value is None or isinstance(value, int | float)


class _Media(Leaf):
    __slots__ = ()

    def ok(self, value: Any) -> bool:
        return value is None or isinstance(value, str)


class _Url(Node):
    __slots__ = ()

    def walk(self, value: Any, parent: Any, key: str | int, path: Path, out: Walk) -> None:
        if isinstance(value, str) and value.startswith("data:"):
            return
        TEXT.walk(value, parent, key, path, out)


# The words JSON schemas and tool definitions are made of: no value hides in
# them, and a schema repeats them for every property.
_SCHEMA_WORDS = frozenset(
    [
        "type",
        "function",
        "name",
        "description",
        "parameters",
        "properties",
        "items",
        "required",
        "enum",
        "strict",
        "additionalProperties",
        "default",
        "format",
        "title",
        "anyOf",
        "oneOf",
        "allOf",
        "$ref",
        "$defs",
        "definitions",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "pattern",
        "const",
        "examples",
        "nullable",
        "string",
        "object",
        "integer",
        "number",
        "boolean",
        "array",
        "null",
    ]
)


class _Deep(Node):
    __slots__ = ()

    def walk(self, value: Any, parent: Any, key: str | int, path: Path, out: Walk) -> None:
        if isinstance(value, str):
            if value and value not in _SCHEMA_WORDS:
                out.slots.append(TextSlot(parent, key, path))
        elif isinstance(value, dict):
            for k in list(value):
                if k and k not in _SCHEMA_WORDS:
                    out.slots.append(KeySlot(value, k, (path, k)))
                self.walk(value[k], value, k, (path, k), out)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                self.walk(item, value, i, (path, i), out)


class _Opaque(Leaf):
    __slots__ = ()

    def ok(self, value: Any) -> bool:
        # An empty list says the same as null (Responses deltas carry `logprobs: []`).
        return value is None or value == []


TEXT: Node = _Text()
JSON_TEXT: Node = _Text(json=True)
KEEP: Node = _Keep()
NUMBER: Node = _Number()
MEDIA: Node = _Media()
URL: Node = _Url()
DEEP: Node = _Deep()
OPAQUE: Node = _Opaque()


class Obj(Node):
    """An object with known keys; any other key is unknown."""

    __slots__ = ("checks", "fields")

    def __init__(self, fields: Mapping[str, Node]) -> None:
        self.fields = dict(fields)
        # The leaves' checks, looked up first: most fields of an event are leaves.
        self.checks = {k: node.ok for k, node in fields.items() if isinstance(node, Leaf)}

    def extend(self, **more: Node) -> Obj:
        """The same object with more keys."""
        return Obj({**self.fields, **more})

    def walk(self, value: Any, parent: Any, key: str | int, path: Path, out: Walk) -> None:
        if value is None:
            return
        if not isinstance(value, dict):
            out.odd(path)
            return
        checks, fields = self.checks, self.fields
        for k, item in value.items():
            check = checks.get(k)
            if check is not None:
                if not check(item):
                    out.odd((path, k))
                continue
            node = fields.get(k)
            if node is None:
                out.odd((path, _key_name(k)))
            else:
                node.walk(item, value, k, (path, k), out)


class ListOf(Node):
    """A list whose every item has one shape."""

    __slots__ = ("item",)

    def __init__(self, item: Node) -> None:
        self.item = item

    def walk(self, value: Any, parent: Any, key: str | int, path: Path, out: Walk) -> None:
        if value is None:
            return
        if not isinstance(value, list):
            out.odd(path)
            return
        item = self.item
        for i, element in enumerate(value):
            item.walk(element, value, i, (path, i), out)


class Either(Node):
    """A value whose shape depends on its JSON type: a string, a number, a list or an object."""

    __slots__ = ("by_type",)

    def __init__(
        self,
        *,
        str: Node | None = None,
        num: Node | None = None,
        list: Node | None = None,
        dict: Node | None = None,
    ) -> None:
        # Keyed by the exact types orjson gives, so one lookup picks the shape.
        self.by_type: Mapping[type, Node | None] = {
            _STR: str,
            _LIST: list,
            _DICT: dict,
            int: num,
            float: num,
            bool: num,
        }

    def walk(self, value: Any, parent: Any, key: str | int, path: Path, out: Walk) -> None:
        if value is None:
            return
        node = self.by_type.get(type(value))
        if node is None:
            out.odd(path)
        else:
            node.walk(value, parent, key, path, out)


_STR, _LIST, _DICT = str, list, dict


class Tagged(Node):
    """An object whose shape is chosen by one key (`type`, `role`)."""

    __slots__ = ("default", "tag", "variants")

    def __init__(self, tag: str, variants: Mapping[str, Node], default: Node | None = None):
        self.tag = tag
        self.variants = dict(variants)
        # The shape of an object without the tag (a Responses input message
        # may leave out `type`).
        self.default = default

    def walk(self, value: Any, parent: Any, key: str | int, path: Path, out: Walk) -> None:
        if not isinstance(value, dict):
            out.odd(path)
            return
        tag = value.get(self.tag)
        node = self.variants.get(tag) if isinstance(tag, str) else None
        if node is None and self.tag not in value:
            node = self.default
        if node is None:
            out.odd((path, self.tag))
        else:
            node.walk(value, parent, key, path, out)


class Parts(Node):
    """A list of content parts; a run of adjacent text parts is one text to the model."""

    __slots__ = ("texts", "variants")

    def __init__(self, variants: Tagged, texts: frozenset[str]) -> None:
        self.variants = variants
        # Part types whose `text` the model reads as part of the same text.
        self.texts = texts

    def walk(self, value: Any, parent: Any, key: str | int, path: Path, out: Walk) -> None:
        if not isinstance(value, list):
            out.odd(path)
            return
        run: list[TextSlot] = []
        for i, part in enumerate(value):
            here = (path, i)
            if isinstance(part, dict) and part.get("type") in self.texts:
                before = len(out.slots)
                self.variants.walk(part, value, i, here, out)
                # The part's own text is its first slot; joined with its neighbours.
                found = out.slots[before:]
                text = [s for s in found if s.parent is part and s.key == "text"]
                if text:
                    out.slots.remove(text[0])
                    run.append(text[0])
                continue
            _close(run, out)
            self.variants.walk(part, value, i, here, out)
        _close(run, out)


def _close(run: list[TextSlot], out: Walk) -> None:
    if len(run) == 1:
        out.slots.append(run[0])
    elif run:
        out.slots.append(JoinedSlot(list(run)))
    run.clear()


def walk(shape: Node, doc: Any) -> Walk:
    """Every text of `doc` the shape reads, and every field it does not know."""
    out = Walk()
    if isinstance(shape, Obj | Tagged):
        shape.walk(doc, None, "", (), out)
    else:
        shape.walk(doc, {"": doc}, "", (), out)
    return out
