"""Log lines: JSON or text, structured fields, and no exception text."""

from __future__ import annotations

import logging

import orjson

from gatewayd.observability.logging import JsonFormatter, TextFormatter


def _record(
    msg: str, fields: dict[str, object] | None = None, exc: bool = False
) -> logging.LogRecord:
    exc_info = None
    if exc:
        # Built at run time: the traceback quotes source lines, which are code.
        value = "@".join(("jane.doe", "example.com"))
        try:
            raise ValueError(f"{value} is not allowed")
        except ValueError:
            import sys

            exc_info = sys.exc_info()
    record = logging.LogRecord("gatewayd.access", logging.INFO, __file__, 1, msg, None, exc_info)
    if fields is not None:
        record.fields = fields
    return record


def test_json_line_carries_fields() -> None:
    """A JSON line is one object with ts, level, logger, msg and the structured fields."""
    line = JsonFormatter().format(_record("request", {"request_id": "r1", "status": 200}))
    parsed = orjson.loads(line)
    assert parsed["msg"] == "request"
    assert parsed["level"] == "info"
    assert parsed["logger"] == "gatewayd.access"
    assert parsed["request_id"] == "r1"
    assert parsed["status"] == 200
    assert parsed["ts"].endswith("Z")
    assert "\n" not in line


def test_text_line_is_key_value() -> None:
    """A text line reads `ts level logger: msg key=value`."""
    line = TextFormatter().format(_record("request", {"route": "v1", "status": 200}))
    assert " info gatewayd.access: request route=v1 status=200" in line


def test_exceptions_show_type_and_stack_never_their_message() -> None:
    """An exception's message can quote input, so only its type and frames are logged."""
    for formatter in (JsonFormatter(), TextFormatter()):
        line = formatter.format(_record("unhandled error", exc=True))
        assert "ValueError" in line
        assert "test_logging.py" in line
        assert "jane.doe@example.com" not in line
