"""Errors of the ingest service.

Hierarchy::

    IngestError                 base of everything this package raises
    ├── ConfigError             a config file, flag or environment variable is invalid
    ├── SchemaError             the database or retention policy could not be prepared
    ├── BrokerError             the MQTT broker refused or could not be reached at start-up
    └── WriteError              a write to InfluxDB did not succeed
        ├── WriteRetryable      5xx, 429, timeout, connection error: try again later
        └── WriteRejected       4xx: the points themselves are refused (malformed, type
                                conflict, beyond retention); retrying cannot help

Library errors (httpx, paho, influxdb-client, pydantic, yaml) are translated at the boundary
with ``raise X(...) from exc`` so callers handle one family.
"""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "ConfigError",
    "IngestError",
    "SchemaError",
    "WriteError",
    "WriteRejected",
    "WriteRetryable",
]


class IngestError(Exception):
    """Base of every error raised by :mod:`ingest`."""


class ConfigError(IngestError):
    """Invalid configuration; the message names the source, the key and the reason."""

    def __init__(self, message: str, *, source: str | None = None) -> None:
        self.source = source
        super().__init__(message)


class SchemaError(IngestError):
    """The database or its retention policy could not be created or checked."""


class BrokerError(IngestError):
    """The broker could not be reached or refused the connection."""


class WriteError(IngestError):
    """A write to InfluxDB failed; ``status`` is the HTTP status when there was one."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        self.message = message
        super().__init__(f"{status}: {message}" if status is not None else message)


class WriteRetryable(WriteError):
    """A transient failure (5xx, 429, timeout, connection); ``retry_after`` in seconds."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, status=status)


class WriteRejected(WriteError):
    """InfluxDB refused (some of) the points: malformed, field type conflict, retention."""
