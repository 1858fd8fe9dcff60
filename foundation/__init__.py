"""The shared foundation: what every service needs below its own code.

Layer 2 of the platform (see docs/architecture.md): it imports only ``telemetry`` and
third-party libraries, and every service (``firmware_bridge``, ``edge_agent``, ``ingest``,
``api``, ``simulators``) and the ``smartcity`` CLI build on it.

- broker access: credentials and TLS of every MQTT connection, and their security rules;
- :class:`Backoff`: the one reconnect schedule (capped, exponential, jittered);
- logging set-up: structured JSON or console lines, one format for every service;
- :func:`influxql`: one InfluxQL query over HTTP(S) with the standard library;
- :func:`free_port`.

The asyncio MQTT session layer lives in :mod:`foundation.mqtt`.
"""

from __future__ import annotations

from foundation._backoff import Backoff, BackoffConfigError
from foundation._broker import (
    BrokerAccess,
    BrokerSetupError,
    BrokerTls,
    check_broker_security,
    configure_client,
    is_loopback,
)
from foundation._influxdb import InfluxQueryError, influxql
from foundation._logging import ConsoleFormatter, JsonFormatter, LogFormat, configure_logging
from foundation._net import free_port

__all__ = [
    "Backoff",
    "BackoffConfigError",
    "BrokerAccess",
    "BrokerSetupError",
    "BrokerTls",
    "ConsoleFormatter",
    "InfluxQueryError",
    "JsonFormatter",
    "LogFormat",
    "check_broker_security",
    "configure_client",
    "configure_logging",
    "free_port",
    "influxql",
    "is_loopback",
]
