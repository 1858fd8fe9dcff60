"""The shared foundation: what every service needs below its own code.

Layer 2 of the platform (see docs/architecture.md): it imports only ``telemetry`` and
third-party libraries, and every service (``firmware_bridge``, ``edge_agent``, ``ingest``,
``api``, ``simulators``) and the ``smartcity`` CLI build on it.

- broker access: credentials and TLS of every MQTT connection, and their security rules;
- :class:`Backoff`: the one reconnect schedule (capped, exponential, jittered);
- :class:`SendPolicy`: the sending rules of a gateway's uplink (window, PUBACK reasons,
  :class:`UnroutedHold`), shared by the edge agent and the simulated fleet;
- :class:`LoopLagMonitor`: event-loop lag into each service's histogram;
- logging set-up: structured JSON or console lines, one format for every service;
- :class:`InfluxAccess`: how a service reaches an InfluxDB (URL, credentials, TLS) and the
  rules that judge it, shared by ingest and the API;
- :func:`influxql`: one InfluxQL query over HTTP(S) with the standard library;
- :func:`free_port`; :class:`Startable` (``with`` for things with ``start()``/``stop()``)
  and :class:`StartableThread`.

The asyncio MQTT session layer lives in :mod:`foundation.mqtt`; the YAML settings source
of the server-side services in :mod:`foundation.settings`.
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
from foundation._influx_access import InfluxAccess
from foundation._influxdb import InfluxQueryError, influxql
from foundation._lifecycle import Startable, StartableThread
from foundation._logging import ConsoleFormatter, JsonFormatter, LogFormat, configure_logging
from foundation._looplag import LAG_BUCKETS, LoopLagMonitor
from foundation._net import free_port
from foundation._sending import UNROUTED_BACKOFF, PubackVerdict, SendPolicy, UnroutedHold

__all__ = [
    "LAG_BUCKETS",
    "UNROUTED_BACKOFF",
    "Backoff",
    "BackoffConfigError",
    "BrokerAccess",
    "BrokerSetupError",
    "BrokerTls",
    "ConsoleFormatter",
    "InfluxAccess",
    "InfluxQueryError",
    "JsonFormatter",
    "LogFormat",
    "LoopLagMonitor",
    "PubackVerdict",
    "SendPolicy",
    "Startable",
    "StartableThread",
    "UnroutedHold",
    "check_broker_security",
    "configure_client",
    "configure_logging",
    "free_port",
    "influxql",
    "is_loopback",
]
