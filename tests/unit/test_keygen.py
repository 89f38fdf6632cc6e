"""`gatewayd keygen NAME`: a key shown once, and config lines that make it work."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from gatewayd.cli import main
from gatewayd.config import load


def test_keygen_prints_a_key_and_lines_that_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The printed lines, pasted into a config, make the printed key that client's."""
    assert main(["keygen", "billing-app"]) == 0
    out = capsys.readouterr().out
    key, rest = out.split("\n", 1)
    assert key.startswith("gwk-")
    assert len(key) > 40
    yaml = rest[rest.index("\nclients:\n") + 1 :]
    assert f"key_sha256: {hashlib.sha256(key.encode()).hexdigest()}" in yaml
    path = tmp_path / "gw.yaml"
    path.write_text("upstreams:\n  u:\n    url: http://127.0.0.1:9\n" + yaml)
    client = load(path, {}).clients["billing-app"]
    assert client.key_sha256 == hashlib.sha256(key.encode()).hexdigest()
    # The key appears once: the config holds its hash only.
    assert out.count(key) == 1


def test_two_keys_differ(capsys: pytest.CaptureFixture[str]) -> None:
    """Every run makes a new random key."""
    main(["keygen", "a"])
    main(["keygen", "a"])
    first, second = (block.split("\n", 1)[0] for block in capsys.readouterr().out.split("gwk-")[1:])
    assert first != second


def test_a_bad_name_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """A name the config could not hold is refused with exit status 2."""
    assert main(["keygen", "no spaces"]) == 2
    assert "not a client name" in capsys.readouterr().err
