"""Prometheus metrics: each scrape renders one :class:`AgentSnapshot` (no hot-path cost).

The collector is given a function returning a snapshot, not the agent: it reads what the
health message reads, and nothing else. The local endpoint (:mod:`edge_agent._local`) serves
it on ``GET /metrics``.

The one exception is the event loop's lag (``edge_event_loop_lag_seconds``), a histogram
that :class:`foundation.LoopLagMonitor` fills ten times a second
(:class:`~edge_agent._looplag.LoopLagHistogram`: an addition per probe, rendered at the
scrape like the rest).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edge_agent._looplag import LoopLagHistogram
from edge_agent._snapshot import AgentSnapshot

__all__ = ["LoopLagHistogram", "SnapshotCollector"]


class SnapshotCollector(Collector):
    """Renders the snapshot ``snapshot()`` returns at each scrape (and the loop lag, if
    given)."""

    def __init__(
        self, snapshot: Callable[[], AgentSnapshot], *, loop_lag: LoopLagHistogram | None = None
    ) -> None:
        self.snapshot = snapshot
        self.loop_lag = loop_lag

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
            (_C, "edge_uplink_connect_failures", "Failed connects to the broker",
             up.connect_failures),
            (_C, "edge_uplink_reconnects",
             "Connections to the broker lost after they were up", up.losses),
            (_C, "edge_spool_dropped_batches", "Batches dropped by the spool budget",
             st.dropped_batches),
            (_G, "edge_process_resident_memory_bytes", "Resident memory of the agent",
             snap.rss_bytes),
            (_C, "edge_process_cpu_seconds", "CPU time of the agent (user + system)",
             snap.cpu_s),
            (_G, "edge_uptime_seconds", "Seconds since the agent started", snap.uptime_s),
        ]:
            yield _one(family, name, doc, gw, value)
        if snap.disk_free_bytes is not None:
            yield _one(_G, "edge_spool_disk_free_bytes",
                       "Free bytes on the spool's filesystem", gw, snap.disk_free_bytes)
        if snap.clock is not None:  # the platform's last sync-time-check (_remote_ops)
            yield _one(_G, "edge_server_clock_offset_seconds",
                       "Gateway clock minus the server's at the last clock check", gw,
                       snap.clock.offset_s)
        info = GaugeMetricFamily(
            "edge_build_info", "The agent's version (value 1)", labels=["gateway", "version"]
        )
        info.add_metric([gw, snap.version], 1)
        yield info
        err = GaugeMetricFamily(
            "edge_uplink_last_error_info",
            "The latest uplink connect failure or loss, by errno (value 1; absent before any)",
            labels=["gateway", "errno"],
        )
        if up.last_error is not None:
            err.add_metric([gw, up.last_errno or "none"], 1)
        yield err
        link_up = GaugeMetricFamily(
            "edge_link_up", "1 when the input's link is up", labels=["gateway", "input"]
        )
        events = CounterMetricFamily(
            "edge_link_events",
            "Link counters per input (firmware_bridge: bytes, frames, link_up, open_failed...; "
            "local MQTT: received, reconnects...)",
            labels=["gateway", "input", "event"],
        )
        drops = CounterMetricFamily(
            "edge_link_dropped",
            "What an input's link discarded, per reason (crc_error, cobs_error, "
            "readings_before_hello, checksum_error, bad_field...)",
            labels=["gateway", "input", "reason"],
        )
        offset = GaugeMetricFamily(
            "edge_clock_offset_seconds",
            "Device clock minus gateway clock at receipt, latest device-stamped reading",
            labels=["gateway", "input"],
        )
        for name, inp in snap.input_links.items():
            link_up.add_metric([gw, name], 1.0 if inp.state == "up" else 0.0)
            for event, n in inp.counters.items():
                events.add_metric([gw, name, event], n)
            for reason, n in inp.drops.items():
                drops.add_metric([gw, name, reason], n)
            if inp.clock_offset_s is not None:
                offset.add_metric([gw, name], inp.clock_offset_s)
        yield link_up
        yield events
        yield drops
        yield offset
        if self.loop_lag is not None:
            yield self.loop_lag.metric(gw)


_G = GaugeMetricFamily
_C = CounterMetricFamily


def _one(
    family: type[GaugeMetricFamily | CounterMetricFamily], name: str, doc: str, gateway: str,
    value: float,
) -> Metric:
    metric = family(name, doc, labels=["gateway"])
    metric.add_metric([gateway], value)
    return metric
