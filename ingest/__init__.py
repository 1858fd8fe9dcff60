"""Ingest: MQTT shared subscription to InfluxDB, lossless, scale-out workers.

- :class:`IngestWorker`: one worker as an async context manager;
  :class:`WorkerThread` runs one on a background thread for synchronous callers;
  :func:`run_worker` runs one until SIGTERM/SIGINT (what ``smartcity ingest run`` does);
- :class:`IngestConfig` and its sections, :func:`load_config` (YAML + env + overrides);
- :class:`IngestMetrics`: the Prometheus metrics of a worker;
- :func:`completeness_query`: InfluxQL for per-gateway completeness from the bookkeeping
  measurement :data:`BOOKKEEPING_MEASUREMENT` (:func:`bookkeeping_line` writes its points);
- :class:`DeadLetter`, :class:`RejectedItem`: dead-letter records (InfluxDB `ingest_deadletter`
  points, and notifications on the dead-letter topic);
- errors: :class:`IngestError` and its subclasses.

The parts of a worker (session, batcher, writer, ack ledger, dead letters) are private
modules; ``docs/ingest.md`` ("Inside a worker") draws them, and describes the delivery
guarantee, the schema and operations. Other services never import this package.
"""

from ingest._bookkeeping import BOOKKEEPING_MEASUREMENT, bookkeeping_line, completeness_query
from ingest._config import (
    BatchConfig,
    InfluxConfig,
    IngestConfig,
    IntakeConfig,
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
from ingest._run import WorkerThread, run_worker
from ingest._worker import IngestWorker, WorkerStats

__all__ = [
    "BOOKKEEPING_MEASUREMENT",
    "BatchConfig",
    "BrokerError",
    "ConfigError",
    "DeadLetter",
    "InfluxConfig",
    "IngestConfig",
    "IngestError",
    "IngestMetrics",
    "IngestWorker",
    "IntakeConfig",
    "MqttConfig",
    "RejectedItem",
    "RetentionConfig",
    "RetryConfig",
    "SchemaError",
    "TlsConfig",
    "WorkerStats",
    "WorkerThread",
    "WriteError",
    "WriteRejected",
    "WriteRetryable",
    "bookkeeping_line",
    "completeness_query",
    "load_config",
    "run_worker",
]
