"""Ingest: MQTT shared subscription to InfluxDB, lossless, scale-out workers.

- :class:`IngestWorker`: one worker as an async context manager;
  :class:`WorkerThread` runs one on a background thread for synchronous callers;
  :func:`run_worker` runs one until SIGTERM/SIGINT (what ``smartcity ingest run`` does);
- :class:`IngestConfig` and its sections, :func:`load_config` (YAML + env + overrides);
- :class:`IngestMetrics`: the Prometheus metrics of a worker;
- :func:`completeness_query`: InfluxQL for per-gateway completeness from the bookkeeping
  measurement :data:`BOOKKEEPING_MEASUREMENT`;
- errors: :class:`IngestError` and its subclasses.

``docs/ingest.md`` describes the delivery guarantee, the schema and operations.
"""

from ingest._bookkeeping import (
    BOOKKEEPING_MEASUREMENT,
    GatewayBook,
    bookkeeping_line,
    completeness_query,
)
from ingest._config import (
    BatchConfig,
    InfluxConfig,
    IngestConfig,
    MqttConfig,
    RetentionConfig,
    RetryConfig,
    TlsConfig,
    load_config,
)
from ingest._deadletter import DeadLetter, RejectedItem
from ingest._errors import (
    BrokerError,
    ConfigError,
    IngestError,
    SchemaError,
    WriteError,
    WriteRejected,
    WriteRetryable,
)
from ingest._metrics import IngestMetrics
from ingest._run import run_worker
from ingest._sink import InfluxV1Sink, InfluxV2Sink, Sink, make_sink
from ingest._worker import IngestWorker, WorkerStats, WorkerThread

__all__ = [
    "BOOKKEEPING_MEASUREMENT",
    "BatchConfig",
    "BrokerError",
    "ConfigError",
    "DeadLetter",
    "GatewayBook",
    "InfluxConfig",
    "InfluxV1Sink",
    "InfluxV2Sink",
    "IngestConfig",
    "IngestError",
    "IngestMetrics",
    "IngestWorker",
    "MqttConfig",
    "RejectedItem",
    "RetentionConfig",
    "RetryConfig",
    "SchemaError",
    "Sink",
    "TlsConfig",
    "WorkerStats",
    "WorkerThread",
    "WriteError",
    "WriteRejected",
    "WriteRetryable",
    "bookkeeping_line",
    "completeness_query",
    "load_config",
    "make_sink",
    "run_worker",
]
