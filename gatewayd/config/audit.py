"""Build the `audit` section: the writer's settings, then the keys of the chosen sink.

The keys sit flat under `audit` (DESIGN fixes them), yet each belongs to one
sink kind, as a filter's keys belong to its kind: `postgres_dsn` under
`sink: jsonl` is reported as not a key of that sink rather than ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from gatewayd.config import values as v
from gatewayd.config.reader import Reader, Spec
from gatewayd.config.schema import (
    AuditConfig,
    JsonlSinkConfig,
    OffSinkConfig,
    PostgresSinkConfig,
    Secret,
    SinkConfig,
)
from gatewayd.config.source import Scalar

# Where the spool goes when spool_dir is not written: systemd's
# StateDirectory= (its first entry, when it names several), as for the file.
STATE_DIRECTORY = "STATE_DIRECTORY"
_STATE_DEFAULT = "/var/lib/gatewayd"
_SPOOL_NAME = "audit-spool"

_WRITER: Spec = {
    "batch_size": v.integer(1),
    "flush_interval": v.duration(positive=True),
    "queue_size": v.integer(1),
    "on_full": v.choice("block", "drop"),
    "block_timeout": v.duration(),
}


def postgres_dsn(scalar: Scalar) -> Secret:
    """A postgresql:// (or postgres://) URL, as asyncpg takes it; never quoted back."""
    written = scalar.text.strip()
    parts = urlsplit(written)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError("must be a URL starting with postgresql://")
    try:
        _ = parts.port  # urlsplit checks the port only when asked
    except ValueError:
        raise ValueError("the URL's port is not a number between 1 and 65535") from None
    return Secret(written)


def default_spool_dir(env: Mapping[str, str]) -> Path:
    """$STATE_DIRECTORY/audit-spool, else /var/lib/gatewayd/audit-spool."""
    state = env.get(STATE_DIRECTORY, "").split(":")[0] or _STATE_DEFAULT
    return Path(state) / _SPOOL_NAME


def read_audit(reader: Reader, base: Path) -> AuditConfig:
    """The `audit` table; relative paths are taken from `base`."""
    fields = reader.fields(_WRITER)
    kind = reader.value("sink", v.choice(*_SINKS))
    if kind is None and reader.has("sink"):
        # A wrong sink is reported; which other keys belong is anyone's guess.
        reader.skip_rest()
    else:
        kind = kind or "jsonl"
        reader.unknown_message = f"not a key of the {kind} sink"
        fields["sink"] = _SINKS[kind](reader, base)
    audit = AuditConfig(**fields)
    if audit.batch_size > audit.queue_size:
        reader.problem("batch_size", "must not be larger than queue_size")
    return audit


def _jsonl(reader: Reader, base: Path) -> SinkConfig:
    return JsonlSinkConfig(**reader.fields({"path": v.path_under(base)}))


def _postgres(reader: Reader, base: Path) -> SinkConfig:
    dsn = reader.value("postgres_dsn", postgres_dsn, required=True)
    fields = reader.fields(
        {
            "spool_dir": v.path_under(base),
            "partition": v.choice("none", "monthly"),
            "retention": v.duration(positive=True),
            "write_timeout": v.duration(positive=True),
        }
    )
    fields.setdefault("spool_dir", default_spool_dir(reader.context.env))
    # Without a DSN the problem is reported; the placeholder never runs.
    return PostgresSinkConfig(dsn=dsn if dsn is not None else Secret(""), **fields)


def _off(reader: Reader, base: Path) -> SinkConfig:
    # Turning the audit off should not mean deleting the sink's lines.
    reader.skip_rest()
    return OffSinkConfig()


_SINKS: dict[str, Callable[[Reader, Path], SinkConfig]] = {
    "jsonl": _jsonl,
    "postgres": _postgres,
    "off": _off,
}
