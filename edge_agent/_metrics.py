"""Prometheus endpoint: each scrape renders one :class:`AgentSnapshot` (no hot-path cost).

The collector is given a function returning a snapshot, not the agent: it reads what the
health message reads, and nothing else.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edge_agent._config import MetricsConfig
from edge_agent._snapshot import AgentSnapshot

__all__ = ["MetricsServer", "SnapshotCollector"]


class SnapshotCollector(Collector):
    """Renders the snapshot ``snapshot()`` returns at each scrape."""

    def __init__(self, snapshot: Callable[[], AgentSnapshot]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot()
        st = snap.spool
        up = snap.uplink
        ck = snap.checkpoints
        gw = snap.gateway
        # (gauge or counter, name, help, value), one sample per gateway.
        simple: list[tuple[type[GaugeMetricFamily | CounterMetricFamily], str, str, float]] = [
            (_G, "edge_spool_batches", "Batches in the spool waiting to be sent", st.batches),
            (_G, "edge_spool_readings", "Readings in the spool waiting to be sent",
             st.readings),
            (_G, "edge_spool_bytes", "Payload bytes in the spool waiting to be sent", st.bytes),
            (_G, "edge_spool_delivered_batches",
             "Acknowledged batches kept for resend requests (spool.keep_delivered_s)",
             st.delivered_batches),
            (_G, "edge_spool_delivered_bytes", "Payload bytes of the kept acknowledged batches",
             st.delivered_bytes),
            (_C, "edge_spool_delivered_evicted",
             "Kept acknowledged batches deleted early to make room (budget)",
             st.delivered_evicted),
            (_C, "edge_batches_resent", "Batches published again on a resend command",
             up.resent_batches),
            (_G, "edge_spool_oldest_age_seconds", "Age of the oldest spooled batch",
             st.oldest_age_s or 0.0),
            (_C, "edge_spool_dropped_readings", "Readings dropped by the spool budget",
             st.dropped_readings),
            (_C, "edge_readings_submitted", "Readings from inputs", snap.submitted),
            (_C, "edge_batches_acked", "Batches acknowledged", up.acked_batches),
            (_C, "edge_batches_unrouted",
             "Batches the broker acknowledged with 0x10 (no subscriber) and that were kept",
             up.unrouted_batches),
        ]
        for family, name, doc, value in simple:
            yield _one(family, name, doc, gw, value)
        c = CounterMetricFamily(
            "edge_stage_dropped",
            "Samples dropped per stage (processor stages, and input_parse: payloads an input "
            "could not parse)",
            labels=["gateway", "stage"],
        )
        for stage, per in snap.dropped.items():
            c.add_metric([gw, stage], sum(per.values()))
        yield c
        c = CounterMetricFamily(
            "edge_input_rejected",
            "Messages an input could not turn into readings (counted, acked, skipped), "
            "per reason",
            labels=["gateway", "input", "reason"],
        )
        for name, reasons in snap.input_rejects.items():
            for reason, n in reasons.items():
                c.add_metric([gw, name, reason], n)
        yield c
        c = CounterMetricFamily(
            "edge_input_failures",
            "Times an input's task failed and was restarted with backoff",
            labels=["gateway", "input"],
        )
        for name, n in snap.input_failures.items():
            c.add_metric([gw, name], n)
        yield c
        for family, name, doc, value in [
            (_C, "edge_checkpoints_written", "Processor checkpoints committed to the spool",
             ck.written),
            (_C, "edge_checkpoint_ignored",
             "Saved checkpoints ignored at start (corrupt or incompatible)", ck.ignored),
            (_C, "edge_checkpoint_windows_closed_early",
             "Open aggregation windows closed early because the processor config changed",
             ck.closed_windows),
            (_G, "edge_checkpoint_bytes", "Size of the last processor checkpoint",
             ck.last_bytes),
            (_G, "edge_checkpoint_seconds",
             "Time to encode and commit the last checkpoint (with its batches)",
             ck.last_ms / 1000),
            (_G, "edge_uplink_up", "1 when connected to the broker",
             1.0 if up.connected else 0.0),
        ]:
            yield _one(family, name, doc, gw, value)


_G = GaugeMetricFamily
_C = CounterMetricFamily


def _one(
    family: type[GaugeMetricFamily | CounterMetricFamily], name: str, doc: str, gateway: str,
    value: float,
) -> Metric:
    metric = family(name, doc, labels=["gateway"])
    metric.add_metric([gateway], value)
    return metric


class MetricsServer:
    """``/metrics`` on ``host:port`` in a daemon thread, with its own registry."""

    def __init__(self, snapshot: Callable[[], AgentSnapshot], cfg: MetricsConfig) -> None:
        self.cfg = cfg
        self.registry = CollectorRegistry()
        self.registry.register(SnapshotCollector(snapshot))
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            return 0
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._server, self._thread = start_http_server(
            self.cfg.port or 0, addr=self.cfg.host, registry=self.registry
        )

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
