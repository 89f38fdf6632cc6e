"""load(): formats, unreadable files, every problem at once, and the example configs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gatewayd.config import ConfigError, load
from gatewayd.config.schema import Config, JsonlSinkConfig, Mode

from .conftest import Problems, Write

EXAMPLES = Path(__file__).resolve().parents[3] / "etc" / "gatewayd"

MINIMAL_YAML = """
upstreams:
  u:
    url: http://127.0.0.1:9
"""
MINIMAL_INI = """
[upstreams.u]
url = http://127.0.0.1:9
"""


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("a.yaml", MINIMAL_YAML),
        ("a.yml", MINIMAL_YAML),
        ("a.ini", MINIMAL_INI),
        ("a.conf", MINIMAL_INI),
    ],
)
def test_format_follows_extension(write: Write, name: str, text: str) -> None:
    """.yaml/.yml are read as YAML and .ini/.conf as INI, to the same result."""
    config = load(write(name, text), {})
    assert config.upstreams["u"].urls == ("http://127.0.0.1:9",)


def test_unknown_extension(write: Write, problems: Problems) -> None:
    """Any other extension is one problem without a line."""
    path = write("gw.toml", "[server]\n")
    assert [str(p) for p in problems(path)] == [
        f"{path}: unknown config format: name the file .yaml, .yml, .ini or .conf"
    ]


def test_missing_file(tmp_path: Path, problems: Problems) -> None:
    """A missing file is a problem with no line, not a traceback."""
    path = tmp_path / "absent.yaml"
    found = problems(path)
    assert [(p.path, p.line, p.key) for p in found] == [(path, None, "")]
    assert str(found[0]) == f"{path}: cannot read: No such file or directory"


def test_directory_instead_of_file(tmp_path: Path, problems: Problems) -> None:
    """A directory named like a config is an unreadable file."""
    path = tmp_path / "conf.d.yaml"
    path.mkdir()
    assert [str(p) for p in problems(path)] == [f"{path}: cannot read: Is a directory"]


def test_not_utf8(tmp_path: Path, problems: Problems) -> None:
    """Bytes that are not UTF-8 are reported with their offset."""
    path = tmp_path / "gw.yaml"
    path.write_bytes(b"server:\n  listen: \xff\n")
    assert [str(p) for p in problems(path)] == [f"{path}: not UTF-8 text (byte 18)"]


def test_source_is_absolute(write: Write, monkeypatch: pytest.MonkeyPatch) -> None:
    """A config loaded by a relative path records its absolute path for reloads."""
    path = write("gw.yaml", MINIMAL_YAML)
    monkeypatch.chdir(path.parent)
    assert load("gw.yaml", {}).source == path


def test_empty_file_is_all_defaults(write: Write) -> None:
    """An empty file is a valid config holding every default."""
    path = write("gw.yaml", "")
    assert load(path, {}) == Config(source=path)


def test_env_defaults_to_process_environment(write: Write, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an env argument, ${VAR} reads os.environ."""
    monkeypatch.setenv("GW_TEST_UPSTREAM", "http://10.1.2.3:8000")
    path = write("gw.yaml", "upstreams:\n  u:\n    url: ${GW_TEST_UPSTREAM}\n")
    assert load(path).upstreams["u"].urls == ("http://10.1.2.3:8000",)


BROKEN_YAML = """
server:
  listen: 127.0.0.1:http
  workers: 0
upstreams:
  openai:
    url: ${OPENAI_BASE_URL}
    api_key: sk-live-0123456789
    retry:
      attempts: many
routes:
  chat:
    prefix: /v1/
    upstream: openia
policies:
  default:
    mode: redcat
    input: [pii]
filters:
  pii:
    kind: pii
    entitites: [EMAIL_ADDRESS]
logging:
  level: verbose
colour: blue
"""

BROKEN_INI = """
[server]
listen = 127.0.0.1:http
workers = 0

[upstreams.openai]
url = ${OPENAI_BASE_URL}
api_key = sk-live-0123456789

[upstreams.openai.retry]
attempts = many

[routes.chat]
prefix = /v1/
upstream = openia

[policies.default]
mode = redcat
input = pii

[filters.pii]
kind = pii
entitites = EMAIL_ADDRESS

[logging]
level = verbose

[colour]
"""


def _expected(path: Path, lines: list[int]) -> list[str]:
    messages = [
        "server.listen: expected HOST:PORT such as 127.0.0.1:8080 or [::1]:8080;"
        " got '127.0.0.1:http'",
        "server.workers: must be between 1 and 1024",
        "upstreams.openai.url: environment variable OPENAI_BASE_URL is not set"
        " (write ${OPENAI_BASE_URL:-} to allow it to be empty)",
        "upstreams.openai.retry.attempts: expected a whole number, got 'many'",
        "routes.chat.upstream: no upstream named 'openia' is declared",
        "policies.default.mode: must be one of off, monitor, redact, block; got 'redcat'",
        "filters.pii.entitites: not a key of pii filters; did you mean entities?",
        "logging.level: must be one of debug, info, warning, error; got 'verbose'",
        "colour: unknown key",
    ]
    return [f"{path}:{line}: {message}" for line, message in zip(lines, messages, strict=True)]


def test_every_yaml_problem_at_once(write: Write, problems: Problems) -> None:
    """One load reports each problem of a YAML file with its line and key, in file order."""
    path = write("gw.yaml", BROKEN_YAML)
    found = [str(p) for p in problems(path)]
    assert found == _expected(path, [2, 3, 6, 9, 13, 16, 21, 23, 24])
    assert not any("sk-live" in line for line in found)


def test_every_ini_problem_at_once(write: Write, problems: Problems) -> None:
    """The INI twin of the broken file gets the same problems on its own lines."""
    path = write("gw.ini", BROKEN_INI)
    found = [str(p) for p in problems(path)]
    assert found == _expected(path, [2, 3, 6, 10, 14, 17, 22, 25, 27])


def test_problem_fields(write: Write) -> None:
    """Each Problem carries the file as given, the line, the dotted key and the message."""
    path = write("gw.yaml", "upstreams:\n  u:\n    url: http://h\n    retry:\n      attempts: 0\n")
    with pytest.raises(ConfigError) as caught:
        load(path, {})
    (problem,) = caught.value.problems
    assert (problem.path, problem.line, problem.key) == (path, 5, "upstreams.u.retry.attempts")
    assert problem.message == "must be between 1 and 10"


def test_example_configs_are_valid() -> None:
    """Both shipped example configs load without a problem in an empty environment."""
    for name in ("gatewayd.yaml", "gatewayd.ini"):
        config = load(EXAMPLES / name, {})
        assert config.policies["default"].mode is Mode.REDACT


def test_example_yaml_and_ini_are_twins() -> None:
    """etc/gatewayd/gatewayd.yaml and gatewayd.ini load to equal Configs, apart from source."""
    env = {"OPENAI_API_KEY": "sk-test", "STATE_DIRECTORY": "/run/state"}
    from_yaml = load(EXAMPLES / "gatewayd.yaml", env)
    from_ini = load(EXAMPLES / "gatewayd.ini", env)
    assert dataclasses.replace(from_yaml, source=from_ini.source) == from_ini
    assert from_ini.upstreams["openai"].api_key == "sk-test"
    assert from_ini.audit.sink == JsonlSinkConfig(path=Path("/run/state/audit.jsonl"))


def test_example_defaults_without_environment() -> None:
    """With nothing set, the example talks to api.openai.com without a key."""
    config = load(EXAMPLES / "gatewayd.yaml", {})
    upstream = config.upstreams["openai"]
    assert upstream.urls == ("https://api.openai.com",)
    assert upstream.api_key is None
    assert config.audit.sink == JsonlSinkConfig(path=Path("/var/lib/gatewayd/audit.jsonl"))
