"""Build the `filters` and `policies` sections: what is looked for, and what is done."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType

from gatewayd.config import values as v
from gatewayd.config.reader import Many, Reader
from gatewayd.config.schema import (
    Action,
    CustomPattern,
    FilterConfig,
    InjectionFilterConfig,
    KeywordsFilterConfig,
    Mode,
    PiiFilterConfig,
    PolicyConfig,
    PresidioFilterConfig,
    SecretsFilterConfig,
)
from gatewayd.config.source import Scalar
from gatewayd.config.upstreams import read_breaker

_ON_ERROR = v.choice("allow", "block")


def read_filters(root: Reader, base: Path) -> dict[str, FilterConfig]:
    """Every well-formed filter; relative files are taken from `base`."""
    result: dict[str, FilterConfig] = {}
    for name, reader in root.tables("filters"):
        kind = reader.value("kind", v.choice(*_KINDS), required=True)
        if kind is None:
            # Without a kind nothing says which keys belong; one problem is enough.
            reader.skip_rest()
            continue
        reader.unknown_message = f"not a key of {kind} filters"
        built = _KINDS[kind](name, reader, base)
        if built is not None:
            result[name] = built
    return result


def _pii(name: str, reader: Reader, base: Path) -> FilterConfig:
    # Imported here: the filters import the schema, which imports this package.
    from gatewayd.guardrails.filters import regex_pii
    from gatewayd.guardrails.filters._phones import REGIONS

    fields = reader.fields(
        {
            "on_error": _ON_ERROR,
            "entities": Many(v.known_entity(regex_pii.ENTITIES)),
            "phone_regions": Many(_phone_region(REGIONS)),
        }
    )
    custom = reader.mapping("custom", v.entity, v.regex)
    if custom is not None:
        fields["custom"] = tuple(
            CustomPattern(entity, pattern) for entity, pattern in custom.items()
        )
    return PiiFilterConfig(name=name, **fields)


def _phone_region(known: frozenset[str]) -> Callable[[Scalar], str]:
    """A region code libphonenumber has metadata for, in any case (`de` is DE)."""

    def convert(scalar: Scalar) -> str:
        code = scalar.text.strip().upper()
        if code not in known:
            raise ValueError(f"not a region with phone metadata: {v.shown(code)}")
        return code

    return convert


def _secrets(name: str, reader: Reader, base: Path) -> FilterConfig:
    from gatewayd.guardrails.filters import secrets

    fields = reader.fields(
        {"on_error": _ON_ERROR, "entities": Many(v.known_entity(secrets.ENTITIES))}
    )
    return SecretsFilterConfig(name=name, **fields)


def _keywords(name: str, reader: Reader, base: Path) -> FilterConfig | None:
    fields = reader.fields(
        {
            "on_error": _ON_ERROR,
            "words": Many(v.text),
            "file": v.existing_file(base),
            "entity": v.entity,
        }
    )
    if not fields.get("words") and "file" not in fields:
        # Also when `file` was given but missing: that problem is reported already.
        if not reader.has("file"):
            reader.problem("words", "a keywords filter needs words, a file, or both")
        return None
    return KeywordsFilterConfig(name=name, **fields)


def _injection(name: str, reader: Reader, base: Path) -> FilterConfig:
    fields = reader.fields(
        {"on_error": _ON_ERROR, "threshold": v.number(0.0, above=True), "entity": v.entity}
    )
    return InjectionFilterConfig(name=name, **fields)


def _presidio(name: str, reader: Reader, base: Path) -> FilterConfig | None:
    url = reader.value("url", v.http_url, required=True)
    fields = reader.fields(
        {
            "on_error": _ON_ERROR,
            "timeout": v.duration(positive=True),
            "score_threshold": v.number(0.0, 1.0),
            "entities": Many(v.entity),
            "language": v.language,
            "allow_list": Many(v.text),
            "max_in_flight": v.integer(1),
            "queue_timeout": v.duration(),
            "cache_size": v.integer(0),
            "cache_ttl": v.duration(),
            "redis_url": v.redis_url,
        }
    )
    breaker = reader.table("breaker")
    if breaker is not None:
        fields["breaker"] = read_breaker(breaker)
    return PresidioFilterConfig(name=name, url=url, **fields) if url is not None else None


_KINDS: dict[str, Callable[[str, Reader, Path], FilterConfig | None]] = {
    "pii": _pii,
    "secrets": _secrets,
    "keywords": _keywords,
    "injection": _injection,
    "presidio": _presidio,
}


def read_policies(root: Reader, filters: set[str]) -> dict[str, PolicyConfig]:
    """Every policy; `filters` are the declared filter names it may list."""
    result: dict[str, PolicyConfig] = {}
    declared = v.one_of(filters, "filter")
    for name, reader in root.tables("policies"):
        fields = reader.fields(
            {
                "mode": v.member(Mode),
                "input": Many(declared),
                "output": Many(declared),
                "restore": v.boolean,
                "on_error": _ON_ERROR,
                "unknown": _ON_ERROR,
                "summary_header": v.boolean,
            }
        )
        for stage in ("input", "output"):
            listed: tuple[str, ...] = fields.get(stage, ())
            for twice in sorted({f for f in listed if listed.count(f) > 1}):
                reader.problem(stage, f"filter {twice} is listed more than once")
        entities = reader.mapping("entities", v.entity, v.member(Action))
        if entities is not None:
            fields["entities"] = MappingProxyType(entities)
        result[name] = PolicyConfig(name=name, **fields)
    return result
