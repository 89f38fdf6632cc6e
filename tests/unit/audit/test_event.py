"""Audit event ids and the event's column order."""

from __future__ import annotations

import uuid

from gatewayd.audit.event import AuditEvent, random_uuid4


def test_event_ids_are_distinct_version_4_uuids() -> None:
    """Every id parses as an RFC 4122 version 4 UUID and none repeats."""
    ids = [random_uuid4() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    for text in ids[:100]:
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text


def test_columns_start_with_event_id_and_ts() -> None:
    """The event's fields, hence the JSONL keys, lead with event_id, ts, request_id."""
    event = AuditEvent(request_id="r", client="ip:127.0.0.1", method="GET", path="/v1/models")
    assert list(event.as_dict())[:4] == ["event_id", "ts", "request_id", "client"]
