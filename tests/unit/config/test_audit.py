"""The audit section: the writer's keys, then the keys of the sink it names."""

from __future__ import annotations

from pathlib import Path

import pytest

from gatewayd.config import load
from gatewayd.config.schema import (
    AuditConfig,
    JsonlSinkConfig,
    OffSinkConfig,
    PostgresSinkConfig,
    Secret,
)

from .conftest import Problems, Write

DSN = "postgresql://gatewayd:hunter2@db.internal:5432/audit"


def test_jsonl_sink(write: Write, tmp_path: Path) -> None:
    """Writer and jsonl keys convert; a relative path is taken from the config file's directory."""
    path = write(
        "gw.yaml",
        """
        audit:
          sink: jsonl
          path: var/audit.jsonl
          batch_size: 10
          flush_interval: 500ms
          queue_size: 100
          on_full: drop
          block_timeout: 250ms
        """,
    )
    assert load(path, {}).audit == AuditConfig(
        sink=JsonlSinkConfig(path=tmp_path / "var" / "audit.jsonl"),
        batch_size=10,
        flush_interval=0.5,
        queue_size=100,
        on_full="drop",
        block_timeout=0.25,
    )


def test_jsonl_path_from_env(write: Write) -> None:
    """An interpolated absolute path is kept as it is."""
    path = write("gw.yaml", "audit:\n  path: ${STATE_DIRECTORY:-/var/lib/gatewayd}/a.jsonl\n")
    sink = load(path, {"STATE_DIRECTORY": "/srv/gw"}).audit.sink
    assert sink == JsonlSinkConfig(path=Path("/srv/gw/a.jsonl"))


def test_postgres_sink_in_yaml_and_ini(write: Write, tmp_path: Path) -> None:
    """Every postgres key converts, the same from YAML and INI; the DSN comes from the env."""
    yaml_path = write(
        "gw.yaml",
        """
        audit:
          sink: postgres
          postgres_dsn: postgresql://gatewayd:${AUDIT_DB_PASSWORD}@db.internal:5432/audit
          spool_dir: spool
          partition: monthly
          retention: 90d
          write_timeout: 2s
        """,
    )
    ini_path = write(
        "gw.ini",
        """
        [audit]
        sink = postgres
        postgres_dsn = postgresql://gatewayd:${AUDIT_DB_PASSWORD}@db.internal:5432/audit
        spool_dir = spool
        partition = monthly
        retention = 90d
        write_timeout = 2s
        """,
    )
    env = {"AUDIT_DB_PASSWORD": "hunter2"}
    expected = PostgresSinkConfig(
        dsn=Secret(DSN),
        spool_dir=tmp_path / "spool",
        partition="monthly",
        retention=90 * 86400.0,
        write_timeout=2.0,
    )
    assert load(yaml_path, env).audit.sink == expected
    assert load(ini_path, env).audit.sink == expected


def test_postgres_dsn_never_shows(write: Write) -> None:
    """The DSN carries the password: the config's repr never shows it."""
    path = write("gw.yaml", f"audit:\n  sink: postgres\n  postgres_dsn: {DSN}\n")
    config = load(path, {})
    assert config.audit.sink == PostgresSinkConfig(
        dsn=Secret(DSN), spool_dir=Path("/var/lib/gatewayd/audit-spool")
    )
    assert "hunter2" not in repr(config)


def test_spool_dir_defaults_under_the_state_directory(write: Write) -> None:
    """Without spool_dir the spool goes under systemd's first StateDirectory."""
    path = write("gw.yaml", f"audit:\n  sink: postgres\n  postgres_dsn: {DSN}\n")
    sink = load(path, {"STATE_DIRECTORY": "/var/lib/gw:/var/lib/other"}).audit.sink
    assert isinstance(sink, PostgresSinkConfig)
    assert sink.spool_dir == Path("/var/lib/gw/audit-spool")


def test_postgres_needs_a_dsn(write: Write, problems: Problems) -> None:
    """sink: postgres without postgres_dsn is a problem on the audit table's line."""
    path = write("gw.yaml", "# audit\naudit:\n  sink: postgres\n")
    assert [str(p) for p in problems(path)] == [f"{path}:2: audit.postgres_dsn: is required"]


@pytest.mark.parametrize(
    ("dsn", "message"),
    [
        ("mysql://root:hunter2@db/audit", "must be a URL starting with postgresql://"),
        ("postgresql://root:hunter2@db:99999/audit", "port is not a number"),
    ],
)
def test_bad_dsn_is_reported_without_its_text(
    write: Write, problems: Problems, dsn: str, message: str
) -> None:
    """A DSN that is not a postgresql:// URL is refused, and the message never quotes it."""
    path = write("gw.yaml", f"audit:\n  sink: postgres\n  postgres_dsn: {dsn}\n")
    (problem,) = problems(path)
    assert (problem.line, problem.key) == (3, "audit.postgres_dsn")
    assert message in problem.message
    assert "hunter2" not in str(problem)


def test_keys_of_another_sink_are_errors(write: Write, problems: Problems) -> None:
    """A postgres key under sink jsonl (and the reverse) names file, line and key."""
    jsonl = write("a.yaml", "audit:\n  sink: jsonl\n  partition: monthly\n")
    postgres = write(
        "b.ini", f"[audit]\nsink = postgres\npostgres_dsn = {DSN}\npath = /tmp/a.jsonl\n"
    )
    assert [str(p) for p in problems(jsonl)] == [
        f"{jsonl}:3: audit.partition: not a key of the jsonl sink"
    ]
    assert [str(p) for p in problems(postgres)] == [
        f"{postgres}:4: audit.path: not a key of the postgres sink"
    ]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("partition", "weekly", "must be one of none, monthly; got 'weekly'"),
        ("retention", "0d", "must be longer than 0s"),
        ("retention", "forever", "such as 250ms, 5s, 2m, 1h or 90d, got 'forever'"),
        ("write_timeout", "0", "must be longer than 0s"),
    ],
)
def test_postgres_value_problems(
    write: Write, problems: Problems, key: str, value: str, message: str
) -> None:
    """Bad postgres sink values name their key and line."""
    path = write("gw.yaml", f"audit:\n  sink: postgres\n  postgres_dsn: {DSN}\n  {key}: {value}\n")
    (problem,) = problems(path)
    assert (problem.line, problem.key) == (4, f"audit.{key}")
    assert message in problem.message


@pytest.mark.parametrize("written", ["off", "no", "false", "Off"])
def test_sink_off_as_false(write: Write, written: str) -> None:
    """YAML reads bare off/no as false; for the audit sink that means "off"."""
    path = write("gw.yaml", f"audit:\n  sink: {written}\n")
    assert load(path, {}).audit.sink == OffSinkConfig()


def test_sink_off_keeps_the_other_sink_keys(write: Write) -> None:
    """Turning the audit off needs no other line removed."""
    path = write("gw.yaml", "audit:\n  sink: off\n  path: a.jsonl\n  partition: monthly\n")
    assert load(path, {}).audit.sink == OffSinkConfig()


def test_sink_true_is_not_a_sink(write: Write, problems: Problems) -> None:
    """A YAML true is not turned into any sink name, and the other keys are not blamed."""
    path = write("gw.yaml", "audit:\n  sink: yes\n  path: a.jsonl\n")
    assert [str(p) for p in problems(path)] == [
        f"{path}:2: audit.sink: must be one of jsonl, postgres, off; got 'yes'"
    ]


def test_on_full_values(write: Write, problems: Problems) -> None:
    """on_full is block or drop, block by default."""
    assert load(write("a.yaml", "audit:\n  sink: jsonl\n"), {}).audit.on_full == "block"
    path = write("b.yaml", "audit:\n  on_full: wait\n")
    assert [str(p) for p in problems(path)] == [
        f"{path}:2: audit.on_full: must be one of block, drop; got 'wait'"
    ]


def test_batch_larger_than_queue(write: Write, problems: Problems) -> None:
    """A batch that can never fill the queue is a problem on batch_size."""
    path = write("gw.yaml", "audit:\n  queue_size: 10\n  batch_size: 20\n")
    assert [str(p) for p in problems(path)] == [
        f"{path}:3: audit.batch_size: must not be larger than queue_size"
    ]
