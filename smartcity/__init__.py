"""The ``smartcity`` command line, and the local stack of real services for tests and the demo."""

from smartcity._localstack import (
    Influxd,
    LocalService,
    Mosquitto,
    ServiceError,
    find_binary,
    free_port,
)
from smartcity._logging import ConsoleFormatter, JsonFormatter, LogFormat, configure_logging

__all__ = [
    "ConsoleFormatter",
    "Influxd",
    "JsonFormatter",
    "LocalService",
    "LogFormat",
    "Mosquitto",
    "ServiceError",
    "configure_logging",
    "find_binary",
    "free_port",
]
