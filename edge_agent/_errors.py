"""Errors of the edge agent.

Hierarchy::

    EdgeError                       base of everything this package raises
    ├── ConfigError                 a config file or remote config that is not valid
    ├── SpoolError                  the on-disk spool cannot be opened or written
    ├── UplinkError                 the central broker connection cannot be set up
    ├── InputError                  an input plugin cannot be built or has failed for good
    │   └── PayloadRejected         one message an input cannot turn into readings (``reason``)
    └── CommandError                a remote command that cannot be carried out

Errors carry their context as attributes (``ConfigError.source``, ``.issues``), and library
errors (``yaml``, ``pydantic``, ``sqlite3``, ``foundation.mqtt``) are translated at the
boundary with ``raise ... from exc``.
"""

from __future__ import annotations

import errno as errno_codes
from dataclasses import dataclass

__all__ = [
    "CommandError",
    "ConfigError",
    "ConfigIssue",
    "EdgeError",
    "InputError",
    "PayloadRejected",
    "SpoolError",
    "UplinkError",
    "errno_name",
]


def errno_name(exc: BaseException | None) -> str | None:
    """The symbolic errno a connect error carries (``ECONNREFUSED``), else ``None``: what a
    log line names when a broker connection fails (a TLS failure or a CONNACK refusal has
    none; :class:`foundation.mqtt.MqttConnectError` then carries ``reason_code``)."""
    code = getattr(exc, "errno", None)
    if not isinstance(code, int):
        return None
    return errno_codes.errorcode.get(code, str(code))


class EdgeError(Exception):
    """Base of every error raised by :mod:`edge_agent`."""


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a config: where (a dotted key path) and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path or '<root>'}: {self.reason}"


class ConfigError(EdgeError):
    """A config that does not validate; names the source, the key paths and the reasons."""

    def __init__(self, source: str, issues: list[ConfigIssue]) -> None:
        self.source = source
        self.issues = issues
        lines = "\n".join(f"  {source}: {issue}" for issue in issues)
        super().__init__(f"invalid config {source} ({len(issues)} problem(s)):\n{lines}")

    @property
    def reason(self) -> str:
        """All issues on one line, for a ConfigReported message or a log field."""
        return "; ".join(str(issue) for issue in self.issues)


class SpoolError(EdgeError):
    """The spool database cannot be opened, read or written."""


class UplinkError(EdgeError):
    """The uplink to the central broker cannot be configured (TLS files, credentials)."""


class InputError(EdgeError):
    """An input plugin cannot be built from its config or has failed for good."""


class PayloadRejected(InputError):
    """One message an input cannot turn into a reading: counted (stage ``input_parse``) and
    acknowledged, never retried. ``reason`` is a short code from a fixed vocabulary (a metric
    label): ``not_number``, ``not_json``, ``too_deep``, ``no_field``, ``contract``."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class CommandError(EdgeError):
    """A remote command that is unknown or whose arguments are wrong."""
