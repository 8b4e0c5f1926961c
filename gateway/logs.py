"""Logs as one JSON object per line, with ``wa_id`` masked to its last four digits.

    configure_logging("info")
    log.info("identity changed", extra={"fields": {"wa_id": mask_wa_id(wa_id)}})

Structured values go in ``extra={"fields": {...}}`` and become top-level keys of the line.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import sys
from typing import IO, Any

_RESERVED = ("time", "level", "logger", "message", "request_id")

# The request id of the RPC being handled; every line logged while handling it carries it,
# including lines from tasks the RPC started (they copy its context).
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


def mask_wa_id(wa_id: str) -> str:
    """``16315551234`` → ``*******1234``: enough to correlate, too little to identify."""
    visible = wa_id[-4:] if len(wa_id) > 4 else ""
    return "*" * (len(wa_id) - len(visible)) + visible


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, fields, and any traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        current_request = request_id.get()
        if current_request is not None:
            line["request_id"] = current_request
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                line[f"field_{key}" if key in _RESERVED else key] = value
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def configure_logging(level: str, stream: IO[str] | None = None) -> None:
    """Send every log record of the process to ``stream`` (stderr) as JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request URL at INFO; the gateway logs what matters itself.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
