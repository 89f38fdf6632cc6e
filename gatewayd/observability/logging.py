"""Log lines as JSON (orjson) or plain text; one access line per request.

Structured fields travel in `extra={"fields": {...}}` and are written as JSON
keys or `key=value` pairs. Callers pass identifiers, counts and fixed words
only: a body, a prompt or a key never goes into a log call.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

from gatewayd.config.schema import LoggingConfig

ACCESS = logging.getLogger("gatewayd.access")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


def _timestamp(record: logging.LogRecord) -> str:
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{whole}.{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then the fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(_fields(record))
        if record.exc_info and record.exc_info[0] is not None:
            # The type and where, not the message: exception text can quote input.
            line["exc_type"] = record.exc_info[0].__name__
            line["stack"] = self.formatStack(_traceback_only(record))
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    """`ts level logger: msg key=value ...` for people reading a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        pairs = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = (
            f"{_timestamp(record)} {record.levelname.lower()} {record.name}: {record.getMessage()}"
        )
        if pairs:
            line = f"{line} {pairs}"
        if record.exc_info and record.exc_info[0] is not None:
            line = f"{line} exc_type={record.exc_info[0].__name__}\n{_traceback_only(record)}"
        return line


def _traceback_only(record: logging.LogRecord) -> str:
    import traceback

    assert record.exc_info is not None
    return "".join(traceback.format_tb(record.exc_info[2])).rstrip()


def configure(config: LoggingConfig) -> None:
    """Point the root logger at stderr with the configured format and level."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if config.format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(config.level.upper())
    # aiohttp's own access log would duplicate ours and print raw paths.
    logging.getLogger("aiohttp.access").disabled = True
    ACCESS.disabled = not config.access_log
