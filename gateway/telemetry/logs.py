"""Logs as one JSON object per line, with ``wa_id`` masked to its last four digits.

    configure_logging("info")
    log.info("identity changed", extra={"fields": {"wa_id": mask_wa_id(wa_id)}})

Structured values go in ``extra={"fields": {...}}`` and become top-level keys of the line.

The one line per RPC goes through :class:`AccessLog` instead of :mod:`logging`: at thousands of
RPCs a second, a logging record and a ``write`` per line cost more than the RPC itself. It
formats the same JSON object, and :class:`gateway.serving.journal.RpcJournal` has it write lines in
batches.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import itertools
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from json.encoder import encode_basestring
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


_log_stream: IO[str] | None = None  # where configure_logging sent the logs


def configure_logging(level: str, stream: IO[str] | None = None) -> None:
    """Send every log record of the process to ``stream`` (stderr) as JSON lines."""
    global _log_stream
    _log_stream = stream or sys.stderr
    handler = logging.StreamHandler(_log_stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request URL at INFO; the gateway logs what matters itself.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def _quoted(value: str | None) -> str:
    """A JSON string for a value known to need no escaping (constants, masked digits)."""
    return "null" if value is None else f'"{value}"'


REQUEST_ID_HEADER = "x-request-id"
# A caller's header longer than this is not forwarded as it is (spec 4.1), nor logged.
MAX_FORWARDED_HEADER = 1024


class RequestIds:
    """Unique request ids, cheaply: a random per-process prefix and a counter (no syscall)."""

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex()
        self._counter = itertools.count(1)

    def new(self) -> str:
        return f"{self._prefix}-{next(self._counter):x}"

    def of(self, metadata: Any) -> str:
        """An RPC's request id: the caller's ``x-request-id`` in ``metadata``, or a new one
        when it has none or one longer than :data:`MAX_FORWARDED_HEADER`."""
        for key, value in metadata or ():
            if key == REQUEST_ID_HEADER and isinstance(value, str):
                return value if len(value) <= MAX_FORWARDED_HEADER else self.new()
        return self.new()


class AccessLog:
    """One JSON line per RPC, on the log stream, written in batches.

        access = AccessLog()
        access.rpc("GetIdentity", "OK", None, 0.0012, "hit", None, wa_id, request_id, time.time())
        access.flush()                              # writes every line added since the last

    It is off unless the ``gateway.rpc`` logger is enabled for INFO, as the level says.
    """

    LOGGER = "gateway.rpc"

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.enabled = logging.getLogger(self.LOGGER).isEnabledFor(logging.INFO)
        self._stream = stream
        self._lines: list[str] = []
        self._second = -1
        self._second_text = ""

    def rpc(
        self,
        method: str,
        code: str,
        reason: str | None,
        seconds: float,
        cache: str | None,
        upstream_status: int | None,
        wa_id: str | None,
        request: str,
        at: float,
    ) -> None:
        """Add the line of one RPC, which ended at ``at`` (seconds since the epoch).

        The line is a template, not ``json.dumps`` of a dict (five times the cost, on every
        RPC). That is safe because every value but the request id is a known constant, a
        number, or masked digits; the request id comes from the caller and is escaped.
        """
        second = int(at)
        if second != self._second:  # formatting a date is slow; once a second is enough
            self._second = second
            self._second_text = dt.datetime.fromtimestamp(second, dt.UTC).strftime(
                "%Y-%m-%dT%H:%M:%S"
            )
        self._lines.append(
            f'{{"time": "{self._second_text}.{int((at - second) * 1000):03d}+00:00", '
            f'"level": "info", "logger": "{self.LOGGER}", "message": "{method} {code}", '
            f'"request_id": {encode_basestring(request)}, "method": "{method}", '
            f'"code": "{code}", "reason": {_quoted(reason)}, '
            f'"latency_ms": {round(seconds * 1000, 3)!r}, "cache": {_quoted(cache)}, '
            f'"upstream_status": {"null" if upstream_status is None else upstream_status}, '
            f'"wa_id": {_quoted(None if wa_id is None else mask_wa_id(wa_id))}}}'
        )

    def flush(self) -> None:
        """Write every pending line now."""
        if not self._lines:
            return
        text = "\n".join(self._lines) + "\n"
        self._lines.clear()
        stream = self._stream or _log_stream or sys.stderr
        with contextlib.suppress(OSError, ValueError):  # a closed stream must not fail an RPC
            stream.write(text)
            stream.flush()


class RateLimitedLog:
    """A logger for failures a client can cause at will: at most one line per ``interval``
    seconds for each kind, the next one saying how many were held back.

        refused = RateLimitedLog(logging.getLogger(__name__), interval=1.0)
        refused.warning("unauthenticated", "refused an unauthenticated webhook from %s", peer)
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._next: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, kind: str, message: str, *args: object) -> None:
        """Log ``message`` now, unless a line of this ``kind`` was logged within the interval."""
        now = self._clock()
        if now < self._next.get(kind, 0.0):
            self._held[kind] = self._held.get(kind, 0) + 1
            return
        self._next[kind] = now + self._interval
        held = self._held.pop(kind, 0)
        if held:
            message += " (and %d more like it since the last such line)"
            args = (*args, held)
        self._logger.warning(message, *args)
