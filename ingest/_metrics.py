"""Prometheus metrics of one worker, in its own registry (several workers may share a process)."""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["IngestMetrics", "MetricsServer"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class IngestMetrics:
    """Counters, gauges and histograms; names are prefixed ``smartcity_ingest_``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        p = "smartcity_ingest"
        self.messages_received = Counter(
            f"{p}_messages_received", "MQTT messages received", registry=r
        )
        self.readings_received = Counter(
            f"{p}_readings_received", "Readings decoded (valid and invalid)", registry=r
        )
        self.readings_written = Counter(
            f"{p}_readings_written", "Readings InfluxDB confirmed (204)", registry=r
        )
        self.readings_rejected = Counter(
            f"{p}_readings_rejected",
            "Readings refused and dead-lettered",
            ["stage"],
            registry=r,
        )
        self.messages_deadlettered = Counter(
            f"{p}_messages_deadlettered",
            "Dead-letter records published, by kind of defect",
            ["kind"],
            registry=r,
        )
        self.write_retries = Counter(
            f"{p}_write_retries", "Write attempts that failed and will be retried", ["reason"],
            registry=r,
        )
        self.writes = Counter(f"{p}_writes", "Successful write requests", registry=r)
        self.readings_in_flight = Gauge(
            f"{p}_readings_in_flight", "Readings received but not yet acknowledged", registry=r
        )
        self.messages_in_flight = Gauge(
            f"{p}_messages_in_flight", "Messages received but not yet acknowledged", registry=r
        )
        self.batch_latency = Histogram(
            f"{p}_batch_latency_seconds",
            "From the first message of a batch received to InfluxDB's 204 (retries included)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.write_duration = Histogram(
            f"{p}_write_duration_seconds",
            "One write request",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.connected = Gauge(f"{p}_broker_connected", "1 while connected to the broker",
                               registry=r)
        self.gateway_last_seq = Gauge(
            f"{p}_gateway_last_seq", "Highest batch seq this worker saw per gateway", ["gateway"],
            registry=r,
        )
        self.gateway_last_seen = Gauge(
            f"{p}_gateway_last_seen_timestamp_seconds",
            "When this worker last received a batch from the gateway (Unix time)",
            ["gateway"],
            registry=r,
        )
        self.gateway_gaps = Counter(
            f"{p}_gateway_seq_gaps",
            "Batch seqs skipped as seen by this worker (exact with one worker per share group)",
            ["gateway"],
            registry=r,
        )
        self.gateway_replays = Counter(
            f"{p}_gateway_replays",
            "Batches received again (seq already seen by this worker, or MQTT DUP)",
            ["gateway"],
            registry=r,
        )


class MetricsServer:
    """The ``/metrics`` HTTP endpoint on a background thread; ``close()`` frees the port."""

    def __init__(self, registry: CollectorRegistry, *, host: str, port: int) -> None:
        self._server: WSGIServer
        self._thread: threading.Thread
        self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        self.port: int = self._server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
