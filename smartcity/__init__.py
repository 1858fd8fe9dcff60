"""The ``smartcity`` command line, and the local stack of real services for tests and the demo.

The local stack (child processes, an HTTP client) is imported on first use only: every
``smartcity edge run`` imports this package, and a gateway never needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from smartcity._logging import ConsoleFormatter, JsonFormatter, LogFormat, configure_logging

if TYPE_CHECKING:
    from smartcity._localstack import (
        Influxd,
        InfluxdTls,
        LocalService,
        Mosquitto,
        MosquittoTls,
        ServiceError,
        find_binary,
        free_port,
        influxql,
    )

_LOCALSTACK = frozenset(
    {"Influxd", "InfluxdTls", "LocalService", "Mosquitto", "MosquittoTls", "ServiceError",
     "find_binary", "free_port", "influxql"}
)  # fmt: skip

__all__ = [
    "ConsoleFormatter",
    "Influxd",
    "InfluxdTls",
    "JsonFormatter",
    "LocalService",
    "LogFormat",
    "Mosquitto",
    "MosquittoTls",
    "ServiceError",
    "configure_logging",
    "find_binary",
    "free_port",
    "influxql",
]


def __getattr__(name: str) -> Any:
    if name in _LOCALSTACK:
        return getattr(importlib.import_module("smartcity._localstack"), name)
    raise AttributeError(f"module 'smartcity' has no attribute {name!r}")
