"""Audit test helpers: events with every field set, and reading JSONL back."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from gatewayd.audit.event import AuditEvent


@pytest.fixture
def make_event() -> Callable[[int], AuditEvent]:
    """A factory of events numbered by request_id, every optional field filled in."""

    def make(number: int) -> AuditEvent:
        return AuditEvent(
            request_id=f"req-{number}",
            client="sha256:" + "ab" * 32,
            method="POST",
            path="/v1/chat/completions",
            ts=1_780_000_000.25 + number,
            route="openai",
            upstream="primary",
            model="gpt-4o-mini",
            stream=True,
            status=200,
            duration_ms=12.5,
            upstream_ms=10.0,
            attempts=1,
            bytes_in=321,
            bytes_out=654,
            prompt_tokens=7,
            completion_tokens=9,
            policy="strict",
            action="redact",
            findings={"input": {"EMAIL_ADDRESS": 2}, "output": {}},
            error=None,
        )

    return make


@pytest.fixture
def read_jsonl() -> Callable[[Path], list[dict[str, Any]]]:
    """A reader returning each line of a JSONL file as a dict (none if the file is missing)."""

    def read(path: Path) -> list[dict[str, Any]]:
        if not path.exists():
            return []
        return [orjson.loads(line) for line in path.read_bytes().splitlines()]

    return read
