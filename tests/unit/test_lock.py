"""requirements/*.lock against setup.cfg: every dependency pinned inside its range, with hashes.

After a dependency changes in setup.cfg these fail until `make lock` is run.
"""

from __future__ import annotations

import configparser
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_LOCK = ROOT / "requirements" / "gatewayd.lock"
TEST_LOCK = ROOT / "requirements" / "test.lock"

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")
_HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


def read_lock(path: Path) -> dict[str, tuple[str, int]]:
    """{normalised name: (version, number of hashes)} of a pip-compile lock."""
    pins: dict[str, tuple[str, int]] = {}
    name = ""
    for line in path.read_text().splitlines():
        match = _PIN.match(line)
        if match:
            name = canonicalize_name(match.group(1))
            pins[name] = (match.group(2), 0)
        elif _HASH.search(line) and name:
            version, hashes = pins[name]
            pins[name] = (version, hashes + 1)
    return pins


def declared(extra: str | None = None) -> list[Requirement]:
    """setup.cfg's install_requires (or one extra), plus pyproject's build requirements."""
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    if extra is None:
        text = setup["options"]["install_requires"]
    else:
        text = setup["options.extras_require"][extra]
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return [Requirement(line) for line in [*lines, *build]]


def outside(lock: dict[str, tuple[str, int]], wanted: list[Requirement]) -> list[str]:
    """The requirements the lock leaves out or pins outside their range."""
    problems = []
    for req in wanted:
        if req.marker is not None and not req.marker.evaluate():
            continue
        pin = lock.get(canonicalize_name(req.name))
        if pin is None:
            problems.append(f"{req}: not in the lock")
        elif not req.specifier.contains(pin[0], prereleases=True):
            problems.append(f"{req}: locked at {pin[0]}")
    return problems


def test_the_runtime_lock_pins_every_dependency_inside_its_range() -> None:
    """gatewayd.lock holds each install_requires and build requirement at a version it allows."""
    assert outside(read_lock(RUNTIME_LOCK), declared()) == []


def test_the_test_lock_pins_runtime_and_test_dependencies_inside_their_ranges() -> None:
    """test.lock holds install_requires and the test extra, each inside its range."""
    lock = read_lock(TEST_LOCK)
    assert outside(lock, declared()) == []
    assert outside(lock, declared("test")) == []


def test_every_pin_has_hashes_and_the_locks_agree() -> None:
    """Each pinned package carries sha256 hashes, and both locks pin shared packages alike."""
    runtime, test = read_lock(RUNTIME_LOCK), read_lock(TEST_LOCK)
    for lock in (runtime, test):
        assert [name for name, (_, hashes) in lock.items() if hashes == 0] == []
    assert {name: test[name][0] for name in runtime} == {
        name: version for name, (version, _) in runtime.items()
    }


def test_a_stale_lock_is_reported() -> None:
    """A range the locked version does not meet, or a dependency missing, is named."""
    lock = {"aiohttp": ("3.9.0", 3)}
    wanted = [Requirement("aiohttp>=3.14"), Requirement("orjson>=3.9")]
    assert outside(lock, wanted) == [
        "aiohttp>=3.14: locked at 3.9.0",
        "orjson>=3.9: not in the lock",
    ]
