"""Prometheus endpoint: values are read from the agent at scrape time (no hot-path cost)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edge_agent._config import MetricsConfig

if TYPE_CHECKING:
    from edge_agent._agent import EdgeAgent

__all__ = ["MetricsServer"]


class _AgentCollector(Collector):
    def __init__(self, agent: EdgeAgent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        a = self.agent
        st = a.spool.stats()
        gw = a.gateway
        g = GaugeMetricFamily(
            "edge_spool_batches", "Batches in the spool waiting to be sent", labels=["gateway"]
        )
        g.add_metric([gw], st.batches)
        yield g
        g = GaugeMetricFamily(
            "edge_spool_readings", "Readings in the spool waiting to be sent", labels=["gateway"]
        )
        g.add_metric([gw], st.readings)
        yield g
        g = GaugeMetricFamily(
            "edge_spool_bytes", "Payload bytes in the spool waiting to be sent",
            labels=["gateway"],
        )
        g.add_metric([gw], st.bytes)
        yield g
        g = GaugeMetricFamily(
            "edge_spool_delivered_batches",
            "Acknowledged batches kept for resend requests (spool.keep_delivered_s)",
            labels=["gateway"],
        )
        g.add_metric([gw], st.delivered_batches)
        yield g
        g = GaugeMetricFamily(
            "edge_spool_delivered_bytes", "Payload bytes of the kept acknowledged batches",
            labels=["gateway"],
        )
        g.add_metric([gw], st.delivered_bytes)
        yield g
        c = CounterMetricFamily(
            "edge_spool_delivered_evicted",
            "Kept acknowledged batches deleted early to make room (budget)", labels=["gateway"],
        )
        c.add_metric([gw], st.delivered_evicted)
        yield c
        c = CounterMetricFamily(
            "edge_batches_resent", "Batches published again on a resend command",
            labels=["gateway"],
        )
        c.add_metric([gw], a.uplink.stats.resent_batches)
        yield c
        g = GaugeMetricFamily(
            "edge_spool_oldest_age_seconds", "Age of the oldest spooled batch", labels=["gateway"]
        )
        g.add_metric([gw], st.oldest_age_s or 0.0)
        yield g
        c = CounterMetricFamily(
            "edge_spool_dropped_readings", "Readings dropped by the spool budget",
            labels=["gateway"],
        )
        c.add_metric([gw], st.dropped_readings)
        yield c
        c = CounterMetricFamily(
            "edge_readings_submitted", "Readings from inputs", labels=["gateway"]
        )
        c.add_metric([gw], a.submitted)
        yield c
        c = CounterMetricFamily("edge_batches_acked", "Batches acknowledged", labels=["gateway"])
        c.add_metric([gw], a.uplink.stats.acked_batches)
        yield c
        c = CounterMetricFamily(
            "edge_batches_unrouted",
            "Batches the broker acknowledged with 0x10 (no subscriber) and that were kept",
            labels=["gateway"],
        )
        c.add_metric([gw], a.uplink.stats.unrouted_batches)
        yield c
        c = CounterMetricFamily(
            "edge_stage_dropped", "Samples dropped per processor stage", labels=["gateway", "stage"]
        )
        for stage, per in a.pipeline.dropped().items():
            c.add_metric([gw, stage], sum(per.values()))
        yield c
        ck = a.checkpoints
        c = CounterMetricFamily(
            "edge_checkpoints_written",
            "Processor checkpoints committed to the spool",
            labels=["gateway"],
        )
        c.add_metric([gw], ck.written)
        yield c
        c = CounterMetricFamily(
            "edge_checkpoint_ignored",
            "Saved checkpoints ignored at start (corrupt or incompatible)",
            labels=["gateway"],
        )
        c.add_metric([gw], ck.ignored)
        yield c
        c = CounterMetricFamily(
            "edge_checkpoint_windows_closed_early",
            "Open aggregation windows closed early because the processor config changed",
            labels=["gateway"],
        )
        c.add_metric([gw], ck.closed_windows)
        yield c
        g = GaugeMetricFamily(
            "edge_checkpoint_bytes", "Size of the last processor checkpoint", labels=["gateway"]
        )
        g.add_metric([gw], ck.last_bytes)
        yield g
        g = GaugeMetricFamily(
            "edge_checkpoint_seconds",
            "Time to encode and commit the last checkpoint (with its batches)",
            labels=["gateway"],
        )
        g.add_metric([gw], ck.last_ms / 1000)
        yield g
        g = GaugeMetricFamily(
            "edge_uplink_up", "1 when connected to the broker", labels=["gateway"]
        )
        g.add_metric([gw], 1.0 if a.uplink.connected else 0.0)
        yield g


class MetricsServer:
    """``/metrics`` on ``host:port`` in a daemon thread, with its own registry."""

    def __init__(self, agent: EdgeAgent, cfg: MetricsConfig) -> None:
        self.cfg = cfg
        self.registry = CollectorRegistry()
        self.registry.register(_AgentCollector(agent))
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
