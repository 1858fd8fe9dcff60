"""Prometheus metrics of one API process, in a registry of its own (one per app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from foundation import LAG_BUCKETS

__all__ = ["ApiMetrics"]


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "smartcity_api_requests", "HTTP requests answered", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "smartcity_api_request_seconds", "HTTP request latency", ["route"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
        )
        self.loop_lag = Histogram(
            "smartcity_api_event_loop_lag_seconds",
            "How late the event loop ran a callback that was due (0.1 s probes)",
            buckets=LAG_BUCKETS, registry=r,
        )
        self.mqtt_messages = Counter(
            "smartcity_api_mqtt_messages", "Broker messages received", ["kind"], registry=r
        )
        self.mqtt_reconnects = Counter(
            "smartcity_api_mqtt_reconnects", "Broker connections made again after a loss",
            registry=r,
        )
        self.mqtt_losses = Counter(
            "smartcity_api_mqtt_connection_losses", "Broker connections lost", registry=r,
        )
        self.mqtt_invalid = Counter(
            "smartcity_api_mqtt_invalid", "Broker payloads that failed to decode", ["kind"],
            registry=r,
        )
        self.mqtt_connected = Gauge(
            "smartcity_api_mqtt_connected", "1 while subscribed to the broker", registry=r
        )
        self.readings = Counter(
            "smartcity_api_readings", "Readings applied to the live state", registry=r
        )
        self.stream_clients = Gauge(
            "smartcity_api_stream_clients", "Live push clients", ["transport"], registry=r
        )
        self.stream_delay = Histogram(
            "smartcity_api_stream_delay_seconds",
            "Live push: from an event's entry into the hub to its hand-off to the client's "
            "socket (queue wait and send)", registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
        )
        self.gc_pause = Histogram(
            "smartcity_api_gc_full_pause_seconds",
            "Full (generation 2) collections of the cyclic garbage collector: the event loop "
            "stands still meanwhile", registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        )
        self.mqtt_handle = Histogram(
            "smartcity_api_mqtt_handle_seconds",
            "Time to take one broker message in (telemetry: decode and push of the readings "
            "somebody follows; the rest is applied after, see "
            "smartcity_api_live_apply_delay_seconds); messages behind it wait that long",
            registry=r,
            buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05),
        )
        self.live_apply_delay = Histogram(
            "smartcity_api_live_apply_delay_seconds",
            "Telemetry batches: from their receipt (their followed readings pushed) to their "
            "application to the live state, inventory and alerts (what REST reads lag)",
            registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        )
        self.live_apply_errors = Counter(
            "smartcity_api_live_apply_errors",
            "Telemetry batches whose application to the live state raised (a bug: logged, "
            "the batch skipped, the other batches applied)", registry=r,
        )
        self.stream_dropped = Counter(
            "smartcity_api_stream_dropped",
            "Events dropped for slow live clients (oldest first)", registry=r,
        )
        self.stream_disconnected = Counter(
            "smartcity_api_stream_slow_disconnects",
            "Live clients disconnected for accepting nothing within the send timeout",
            registry=r,
        )
        self.alerts_active = Gauge(
            "smartcity_api_alerts_active", "Active alerts", ["severity"], registry=r
        )
        self.alert_transitions = Counter(
            "smartcity_api_alert_transitions", "Alert transitions", ["transition"], registry=r
        )
        self.auth_failures = Counter(
            "smartcity_api_auth_failures", "Refused authentications", ["reason"], registry=r
        )
        self.completeness_torn_reads = Counter(
            "smartcity_api_completeness_torn_reads",
            "Completeness rows read while their batches were being written (read again)",
            registry=r,
        )
        self.alert_history_written = Counter(
            "smartcity_api_alert_history_written",
            "Alert transitions stored in the alert history", registry=r,
        )
        self.audit_failed = Counter(
            "smartcity_api_audit_failed",
            "Audit entries that could not be written (the operation's answer stands)",
            registry=r,
        )
        self.enrol_refused = Counter(
            "smartcity_api_enrol_refused",
            "Gateway enrolments refused (unknown, used, expired or revoked token; rate limit)",
            ["reason"], registry=r,
        )
        self.alert_history_failed = Counter(
            "smartcity_api_alert_history_failed",
            "Alert history writes that failed (retried; dropped past the buffer)", ["outcome"],
            registry=r,
        )
        self.gap_repair_rounds = Counter(
            "smartcity_api_gap_repair_rounds", "Gap repair rounds run", registry=r
        )
        self.gap_repair_missing = Gauge(
            "smartcity_api_gap_repair_missing_batches",
            "Batches missing from ingest bookkeeping at the last gap repair round (online "
            "gateways, completeness window)", registry=r,
        )
        self.gap_repair_seqs = Counter(
            "smartcity_api_gap_repair_seqs",
            "Batch seqs asked for again (requested) and the gateways' answers (found: held and "
            "sent again or on their way; missing: not held any more)", ["outcome"], registry=r,
        )
        self.gap_repair_requests = Counter(
            "smartcity_api_gap_repair_requests",
            "resend commands: sent, answered, refused (error answer), unanswered, failed "
            "(not published)", ["outcome"], registry=r,
        )
        self.gap_repair_resets = Counter(
            "smartcity_api_gap_repair_resets",
            "Gateways whose batch seq jumped by more than gap_repair_window (treated as a "
            "restart of their numbering, not as a hole)", registry=r,
        )
        self.live_series_refused = Counter(
            "smartcity_api_live_series_refused",
            "Readings of new live series refused: their gateway holds "
            "live_max_series_per_gateway series already", registry=r,
        )
        self.live_series_evicted = Counter(
            "smartcity_api_live_series_evicted",
            "Live series dropped after live_series_ttl_s without a reading", registry=r,
        )
        self.live_series = Gauge(
            "smartcity_api_live_series", "Series held in the live state", registry=r
        )
        self.alert_transitions_held = Counter(
            "smartcity_api_alert_raises_held",
            "Alert raises postponed because the same rule and subject resolved less than "
            "alert_min_hold_s ago", registry=r,
        )
        self.stream_refused = Counter(
            "smartcity_api_stream_refused",
            "Live push connections refused: the key holds stream_max_per_key streams",
            registry=r,
        )
        self.key_lookups = Counter(
            "smartcity_api_key_lookups",
            "API keys looked up in the operator database (cache misses)", registry=r,
        )
