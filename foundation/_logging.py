"""Structured logs for every service, on the stdlib alone.

Libraries log through :mod:`logging` with ``extra={...}`` key/values::

    log.info("batch written", extra={"gateway": "gw-1", "readings": 100})

and the command line decides how records are rendered on stderr: JSON lines
(``--log-format json``, for journald, Loki or any log shipper) or ``key=value`` text for a
terminal. No third-party logging library: on a gateway every megabyte counts, and the usual
ones load a rich-text stack (~15 MB of RSS) at import.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any, Literal

__all__ = ["ConsoleFormatter", "JsonFormatter", "LogFormat", "configure_logging"]

LogFormat = Literal["json", "console"]

# Attributes every LogRecord has; anything else came from ``extra=`` and is a structured key.
_RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRS and not k.startswith("_")
    }


def _timestamp(record: logging.LogRecord) -> str:
    return dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, logger, event, then the extra keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class ConsoleFormatter(logging.Formatter):
    """``2026-11-28T05:41:48.550Z info  ingest  batch written  gateway=gw-1 readings=100``."""

    def format(self, record: logging.LogRecord) -> str:
        pairs = " ".join(f"{k}={v!r}" if isinstance(v, str) and " " in v else f"{k}={v}"
                         for k, v in _fields(record).items())  # fmt: skip
        line = (
            f"{_timestamp(record)} {record.levelname.lower():<7} {record.name:<12} "
            f"{record.getMessage()}  {pairs}"
        ).rstrip()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(level: str = "INFO", fmt: LogFormat | None = None) -> None:
    """Route all logging to stderr as JSON lines or console key=value text.

    ``fmt=None`` picks console on a terminal and JSON otherwise.
    """
    if fmt is None:
        fmt = "console" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # HTTP client libraries log every request at INFO: far too much on a write hot path.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
