"""The top layer: the ``smartcity`` command line, the demo, the chaos run, and the local stack
of real services (mosquitto, influxd) for tests, benchmarks and the demo.

The local stack (child processes, an HTTP client) is imported on first use only: every
``smartcity edge run`` imports this package, and a gateway never needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from smartcity._localstack import (
        Influxd,
        InfluxdTls,
        LocalService,
        Mosquitto,
        MosquittoTls,
        ServiceError,
        find_binary,
    )

_LOCALSTACK = frozenset(
    {"Influxd", "InfluxdTls", "LocalService", "Mosquitto", "MosquittoTls", "ServiceError",
     "find_binary"}
)  # fmt: skip

__all__ = [
    "Influxd",
    "InfluxdTls",
    "LocalService",
    "Mosquitto",
    "MosquittoTls",
    "ServiceError",
    "find_binary",
]


def __getattr__(name: str) -> Any:
    if name in _LOCALSTACK:
        return getattr(importlib.import_module("smartcity._localstack"), name)
    raise AttributeError(f"module 'smartcity' has no attribute {name!r}")
