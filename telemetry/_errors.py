"""Errors of the wire contract.

Hierarchy::

    TelemetryError                  base of everything this package raises
    ├── PayloadError                a message body that breaks the contract
    │   ├── PayloadTooLarge         bigger than MAX_PAYLOAD_BYTES
    │   ├── MalformedPayload        not JSON, bad UTF-8, truncated
    │   ├── UnsupportedVersion      "v" is not a version this build speaks
    │   └── InvalidPayload          well-formed JSON that fails validation
    └── TopicError                  a topic outside the namespace

Every error carries ``reason`` (one line, human readable) and, where it applies, ``path``
(a JSON path such as ``$.r[3].f.speed``) so that a dead-letter record or a log line says
exactly what was wrong.
"""

from __future__ import annotations

__all__ = [
    "InvalidPayload",
    "MalformedPayload",
    "PayloadError",
    "PayloadTooLarge",
    "TelemetryError",
    "TopicError",
    "UnsupportedVersion",
]


class TelemetryError(Exception):
    """Base of every error raised by :mod:`telemetry`."""

    def __init__(self, reason: str, *, path: str | None = None) -> None:
        self.reason = reason
        self.path = path
        super().__init__(f"{reason} (at {path})" if path else reason)


class PayloadError(TelemetryError):
    """A message payload that breaks the wire contract."""

    kind = "invalid"


class PayloadTooLarge(PayloadError):
    """The payload is bigger than the contract allows."""

    kind = "too_large"

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"payload is {size} bytes, the limit is {limit}")


class MalformedPayload(PayloadError):
    """The payload is not valid UTF-8 JSON (truncated, binary, bad encoding)."""

    kind = "malformed"


class UnsupportedVersion(PayloadError):
    """The payload's ``v`` names a version this build does not speak."""

    kind = "unsupported_version"

    def __init__(self, version: object, supported: tuple[int, ...]) -> None:
        self.version = version
        self.supported = supported
        super().__init__(
            f"payload version {version!r} is not supported (supported: {list(supported)})",
            path="$.v",
        )


class InvalidPayload(PayloadError):
    """Well-formed JSON whose content fails validation (types, ranges, names)."""

    kind = "invalid"


class TopicError(TelemetryError):
    """A topic that is not part of the namespace, or an id that cannot be a topic level."""
