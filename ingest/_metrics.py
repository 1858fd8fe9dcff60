"""Prometheus metrics of one worker, in its own registry (several workers may share a process).

The parts of a worker count in a plain :class:`Tally` (an attribute increment per message);
:meth:`Tally.sync` brings the Prometheus counters and the per-gateway series up to it once per
turn of the batch loop and per write: a labelled Prometheus update costs microseconds.
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from foundation import LAG_BUCKETS
from ingest._bookkeeping import GatewayBook

__all__ = ["IngestMetrics", "MetricsServer", "Tally"]

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
        self.readings_refused = Counter(
            f"{p}_readings_refused",
            "Readings refused before storage, by reason (contract, field_type, "
            "future_timestamp, reserved_measurement, control_character)",
            ["reason"],
            registry=r,
        )
        self.deadletters_unstored = Counter(
            f"{p}_deadletters_unstored",
            "Dead-letter points InfluxDB refused (kept only in the log and the notification)",
            registry=r,
        )
        self.deadletters_suppressed = Counter(
            f"{p}_deadletters_suppressed",
            "Dead-letter records left out because their gateway was past its budget "
            "(deadletters.per_gateway): counted by kind in messages_deadlettered, summarised "
            "in kind=suppressed points, neither stored whole nor sent",
            registry=r,
        )
        self.deadletter_summaries = Counter(
            f"{p}_deadletter_summaries",
            "Summary points (ingest_deadletter, kind=suppressed) made for records left out "
            "over a gateway's dead-letter budget",
            registry=r,
        )
        self.deadletters_streamed = Counter(
            f"{p}_deadletters_streamed",
            "Dead-letter records the JetStream dead-letter stream confirmed stored (PubAck; "
            "jetstream source only), the refused message acknowledged after it",
            registry=r,
        )
        self.deadletter_stream_retries = Counter(
            f"{p}_deadletter_stream_retries",
            "Dead-letter records published again: no PubAck (no quorum, timeout, refused)",
            registry=r,
        )
        self.notifications_undelivered = Counter(
            f"{p}_notifications_undelivered",
            "Live dead-letter notifications not delivered (best effort; the durable copy is "
            "the ingest_deadletter point), by reason: not_sent (not connected, publish window "
            "full), no_subscriber, refused, connection_lost",
            ["reason"],
            registry=r,
        )
        self.messages_deadlettered = Counter(
            f"{p}_messages_deadlettered",
            "Dead-letter records made, by kind of defect (internal_error: a bug)",
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
        self.loop_lag = Histogram(
            f"{p}_event_loop_lag_seconds",
            "How late the event loop ran a callback that was due (0.1 s probes)",
            buckets=LAG_BUCKETS,
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


class Tally:
    """A worker's counts as plain integers: what :class:`~ingest.WorkerStats` reports.

    ``messages_received``, ``readings_received`` and ``readings_written`` reach Prometheus
    through :meth:`sync`; the parts that count the others update their labelled Prometheus
    counters themselves (they are rare).
    """

    __slots__ = (
        "_synced",
        "_synced_gateways",
        "deadletters",
        "deadletters_suppressed",
        "dirty_gateways",
        "messages_received",
        "readings_received",
        "readings_rejected",
        "readings_written",
        "write_retries",
    )

    def __init__(self) -> None:
        self.messages_received = 0
        self.readings_received = 0
        self.readings_written = 0
        self.readings_rejected = 0
        self.deadletters = 0
        #: refusals past their gateway's dead-letter budget (no record made)
        self.deadletters_suppressed = 0
        self.write_retries = 0
        #: Gateways whose book changed since the last :meth:`sync`.
        self.dirty_gateways: set[str] = set()
        self._synced = (0, 0, 0)
        self._synced_gateways: dict[str, tuple[int, int]] = {}

    def as_dict(self) -> dict[str, int]:
        return {
            "messages_received": self.messages_received,
            "readings_received": self.readings_received,
            "readings_written": self.readings_written,
            "readings_rejected": self.readings_rejected,
            "deadletters": self.deadletters,
            "deadletters_suppressed": self.deadletters_suppressed,
            "write_retries": self.write_retries,
        }

    def sync(self, m: IngestMetrics, book: GatewayBook) -> None:
        """Bring the Prometheus counters and per-gateway series up to these counts."""
        now = (self.messages_received, self.readings_received, self.readings_written)
        if now != self._synced:
            for counter, new, old in zip(
                (m.messages_received, m.readings_received, m.readings_written),
                now,
                self._synced,
                strict=True,
            ):
                if new != old:
                    counter.inc(new - old)
            self._synced = now
        if not self.dirty_gateways:
            return
        seen = self._synced_gateways
        for gateway in self.dirty_gateways:
            last_seq, gaps, replays, last_seen = book.state(gateway)
            m.gateway_last_seq.labels(gateway).set(last_seq)
            m.gateway_last_seen.labels(gateway).set(last_seen)
            old_gaps, old_replays = seen.get(gateway, (0, 0))
            if gaps > old_gaps:
                m.gateway_gaps.labels(gateway).inc(gaps - old_gaps)
            if replays > old_replays:
                m.gateway_replays.labels(gateway).inc(replays - old_replays)
            seen[gateway] = (gaps, replays)
        self.dirty_gateways.clear()
