"""What the app's lifespan owns: broker link, InfluxDB client, state, alerts, background tasks.

::

    Services (async context manager, one per app)
    ├── InfluxClient           history, warm-up, completeness
    ├── BrokerLink             foundation.mqtt session ─▶ receive(topic, payload) (api.state)
    │     └─▶ LiveIntake: followed readings ─▶ Hub (live push) now; the batch queued and
    │         applied by .live-intake ─▶ Inventory, LiveState ─▶ AlertEngine ─▶ Hub
    ├── Schedule               GTFS timetable (gtfs_static_path), vehicles' adherence to it
    └── TaskGroup "api[<client id>]"
          ├── .live-intake     telemetry batches applied oldest first, ~1 ms per loop turn
          ├── .completeness    ingest bookkeeping -> per-gateway completeness, every N s
          ├── .gap-repair      missing batches -> ``resend`` to their gateway (api.state)
          ├── .audit           audit entries older than audit_keep_days pruned, hourly
          └── .alerts          staleness tick every second, rules reload every 30 s, live
                               series silent for live_series_ttl_s evicted every 60 s

Start order: database, InfluxDB client, warm-up from InfluxDB, then the broker (so a fresh
reading from the broker always lands after the warm value it supersedes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Final, Self

import msgspec
from prometheus_client import Counter
from sqlalchemy.exc import SQLAlchemyError

from api._auth import KeyVerifier, RateLimiter
from api._dynsec import Dynsec
from api._errors import UpstreamUnavailable
from api._metrics import ApiMetrics
from api._params import iso
from api._settings import ApiSettings
from api.state import (
    Alert,
    AlertEngine,
    AlertHistory,
    AlertTransition,
    AreaMap,
    BrokerLink,
    ConfigPushes,
    Event,
    GapRepair,
    GatewayCommands,
    Hub,
    Inventory,
    Latest,
    LiveIntake,
    LiveState,
    Rule,
    Schedule,
    ScheduleCollector,
    completeness_of,
    load_gtfs,
    prepare_broker,
)
from api.storage import (
    AuditLog,
    Database,
    InfluxClient,
    influx_verify,
    select_completeness,
    select_latest,
    show_measurements,
)
from telemetry import (
    ID_RE,
    MEASUREMENTS,
    NAME_RE,
    PLATFORM_MEASUREMENT_PREFIX,
    Birth,
    ConfigReported,
    Death,
    Health,
    PayloadError,
    Reading,
    TopicError,
    TopicKind,
    decode_batch_partial,
    decode_message,
    decode_status,
)

__all__ = ["Services", "prepare_connections"]

log = logging.getLogger("api")

_RULES_RELOAD_S: Final = 30.0
_EVICT_EVERY_S: Final = 60.0
#: Warm-up reads no more measurements than this (names come from InfluxDB, i.e. from ingest).
_WARM_MAX_MEASUREMENTS: Final = 1000
_encoder: Final = msgspec.json.Encoder()


class _AlertEvent(msgspec.Struct):
    type: str
    state: str
    alert: Alert


class _GatewayEvent(msgspec.Struct):
    type: str
    gateway: str
    state: str
    time: str


def prepare_connections(settings: ApiSettings) -> None:
    """Prepare every connection as start-up does before connecting: the broker's TLS context
    and password file (``mqtt.*``), InfluxDB's TLS context (``influx_*``), the GTFS feed
    (``gtfs_static_path``). Raise
    :class:`ConfigError` naming the key and the file. ``api check-config`` runs it."""
    prepare_broker(settings.mqtt)
    influx_verify(settings.influx)
    load_schedule(settings)
    load_areas(settings)


def load_areas(settings: ApiSettings) -> AreaMap | None:
    """The area map of ``areas_path`` (none when unset); raise :class:`ConfigError`."""
    return AreaMap.load(settings.areas_path) if settings.areas_path is not None else None


def load_schedule(settings: ApiSettings) -> Schedule:
    """The timetable of ``gtfs_static_path`` (none when unset); raise :class:`ConfigError`
    (a ``GtfsFeedError`` naming the file, line and column) when the feed cannot be used."""
    feed = None
    if settings.gtfs_static_path is not None:
        feed = load_gtfs(
            settings.gtfs_static_path,
            max_bytes=settings.gtfs_max_bytes,
            max_unpacked_bytes=settings.gtfs_max_unpacked_bytes,
        )
    return Schedule(
        feed,
        late_threshold_s=settings.late_threshold_s,
        bunched_ratio=settings.bunched_ratio,
        off_route_m=settings.gtfs_off_route_m,
    )


class Services:
    """Everything the routes read from; ``app.state.services``."""

    def __init__(self, settings: ApiSettings, *, db: Database | None = None) -> None:
        self.settings = settings
        self.metrics = ApiMetrics()
        self.db = db or Database(settings.database_url)
        self.keys = KeyVerifier(
            self.db, ttl=settings.key_cache_s, on_lookup=self.metrics.key_lookups.inc
        )
        self.limiter = RateLimiter(rate=settings.rate_limit_per_s, burst=settings.rate_limit_burst)
        self.auth_failures = RateLimiter(
            rate=settings.auth_failures_per_s, burst=settings.auth_failures_burst
        )
        self.inventory = Inventory()
        self.live = LiveState(max_series_per_gateway=settings.live_max_series_per_gateway)
        self.hub = Hub(queue_size=settings.stream_queue)
        self.alerts = AlertEngine(
            inventory=self.inventory,
            free_flow_kmh=settings.free_flow_speed_kmh,
            on_change=self._alert_changed,
            min_hold_s=settings.alert_min_hold_s,
            on_held=self.metrics.alert_transitions_held.inc,
        )
        #: The GTFS timetable (``gtfs_static_path``, read and validated here: a bad feed
        #: stops the start with a ConfigError) and the schedule adherence computed against it.
        self.schedule = load_schedule(settings)
        #: Where a reading with its own position is (``areas_path``; docs/api.md "Areas").
        self.areas = load_areas(settings)
        self.metrics.registry.register(ScheduleCollector(self.schedule, self.live))
        self.influx = InfluxClient.from_settings(settings, registry=self.metrics.registry)
        self.intake = LiveIntake(
            inventory=self.inventory, live=self.live, hub=self.hub, alerts=self.alerts,
            areas=self.areas, metrics=self.metrics, decode=self._telemetry,
        )
        self.broker = BrokerLink(settings, self.receive, self.metrics)
        self.repair: GapRepair | None = None
        if settings.gap_repair:
            self.repair = GapRepair(
                settings,
                influx=self.influx,
                broker=self.broker,
                inventory=self.inventory,
                metrics=self.metrics,
            )
        #: Commands that wait for the gateway's answer (api.routes._commands), clock checks.
        self.commands = GatewayCommands(self.broker)
        self.command_limiter = RateLimiter(
            rate=settings.command_rate_per_min / 60.0, burst=settings.command_burst
        )
        self._history = AlertHistory(self.db, self.metrics, keep_days=settings.alert_history_days)
        #: The audit trail (api.storage._audit; ``GET /v1/audit``), pruned by ``.audit``.
        self.audit = AuditLog(self.db, keep_days=settings.audit_keep_days)
        #: Config pushes waiting for the gateway's report (their audit entries' results).
        self.config_pushes = ConfigPushes(
            self.audit, on_failed=self.metrics.audit_failed.inc,
            name=f"api[{settings.mqtt.client_id}]",
        )
        #: Gateway enrolment (api.routes._enrolment): the broker's dynamic-security admin
        #: (None: not configured) and the per-address limit of token redemptions.
        enrol = settings.enrolment
        self.dynsec = (Dynsec(enrol.dynsec, self.broker.topics)
                       if enrol.dynsec is not None else None)
        self.enrol_limiter = RateLimiter(rate=enrol.rate_per_min / 60.0, burst=enrol.rate_burst)
        self.name = f"api[{settings.mqtt.client_id}]"
        #: ``smartcity_api_mqtt_messages`` per topic kind (labels() looked up once, not per
        #: message).
        self._received: dict[TopicKind, Counter] = {}
        self._stack = AsyncExitStack()
        self._tasks: list[asyncio.Task[None]] = []
        self.warmed = 0
        #: Demo mode only: role -> key created at start.
        self.demo_keys: dict[str, str] = {}

    # -- lifecycle --------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        async with AsyncExitStack() as stack:
            await asyncio.to_thread(self.db.create_schema)
            stack.callback(self.db.dispose)
            await stack.enter_async_context(self.influx)
            await self.reload_rules()
            self.warmed = await self.warm()
            await stack.enter_async_context(self.broker)
            group = await stack.enter_async_context(asyncio.TaskGroup())
            self._tasks = [
                group.create_task(self.intake.run(), name=f"{self.name}.live-intake"),
                group.create_task(self._completeness_loop(), name=f"{self.name}.completeness"),
                group.create_task(self._alerts_loop(), name=f"{self.name}.alerts"),
                group.create_task(self._history.run(), name=f"{self.name}.alert-history"),
                group.create_task(self.audit.run(), name=f"{self.name}.audit"),
            ]
            if self.repair is not None:
                self._tasks.append(
                    group.create_task(self.repair.run(), name=f"{self.name}.gap-repair")
                )
            self._stack = stack.pop_all()
        log.info(
            "api services started",
            extra={"warmed_series": self.warmed, "broker": self.broker.connected},
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in self._tasks:
            task.cancel()
        await self._stack.aclose()

    # -- broker messages (event loop) -------------------------------------------------------
    def receive(self, topic: str, payload: bytes) -> None:
        """The broker link's handler: a telemetry batch's followed readings are pushed now
        and the batch is applied (decoded first, when no followed device was in it) from the
        intake's backlog (api.state._intake); anything else is applied at once, a birth or
        death after its gateway's queued batches. Tests that read the state right after
        drain the backlog with ``intake.flush()``."""
        parsed = self._parse(topic)
        if parsed is None:
            return
        gateway, kind = parsed
        if kind is TopicKind.TELEMETRY:
            self.intake.take(gateway, payload)
            return
        if kind is TopicKind.STATUS:
            self.intake.flush_gateway(gateway)
        self._dispatch(topic, gateway, kind, payload)

    def _telemetry(self, gateway: str, payload: bytes) -> Sequence[Reading] | None:
        """The valid readings of a telemetry batch of ``gateway``'s topic; ``None`` (counted)
        when it is refused (the intake's decoder)."""
        try:
            return self._batch(gateway, payload)
        except PayloadError as exc:
            self._invalid(self.broker.topics.telemetry(gateway), TopicKind.TELEMETRY, exc)
            return None

    def _parse(self, topic: str) -> tuple[str, TopicKind] | None:
        try:
            gateway, kind = self.broker.topics.parse(topic)
        except TopicError:
            self.metrics.mqtt_invalid.labels("topic").inc()
            return None
        counted = self._received.get(kind)
        if counted is None:
            counted = self._received[kind] = self.metrics.mqtt_messages.labels(kind.value)
        counted.inc()
        return gateway, kind

    def _dispatch(self, topic: str, gateway: str, kind: TopicKind, payload: bytes) -> None:
        """A message other than telemetry, applied at once."""
        try:
            if kind is TopicKind.STATUS:
                self._status(gateway, payload)
            elif kind is TopicKind.HEALTH:
                health = decode_message(payload, Health)
                state = self.inventory.gateway(gateway)
                state.health = msgspec.to_builtins(health)
                state.last_seen_ns = time.time_ns()
            elif kind is TopicKind.CONFIG_REPORTED and payload:
                reported = decode_message(payload, ConfigReported)
                self.inventory.gateway(gateway).config_reported = msgspec.to_builtins(reported)
                self.config_pushes.answered(gateway, reported)
        except PayloadError as exc:
            self._invalid(topic, kind, exc)

    def _invalid(self, topic: str, kind: TopicKind, exc: PayloadError) -> None:
        self.metrics.mqtt_invalid.labels(kind.value).inc()
        log.debug("invalid payload", extra={"topic": topic, "reason": str(exc)})

    def _status(self, gateway: str, payload: bytes) -> None:
        if not payload:  # retained status cleared: the gateway was decommissioned
            self.inventory.gateways.pop(gateway, None)
            return
        status = decode_status(payload)
        if status.gw != gateway:
            self.metrics.mqtt_invalid.labels("status").inc()
            return
        self.apply_status(gateway, status, time.time_ns())

    def apply_status(
        self, gateway: str, status: Birth | Death, now: int, *, reason: str | None = None
    ) -> None:
        """A birth or death into the live inventory (``reason`` replaces the status's own),
        after the gateway's queued batches; the ``gateway`` event is pushed when the state
        changed."""
        self.intake.flush_gateway(gateway)  # a revocation's death too, not only the broker's
        changed = self.inventory.apply_status(gateway, status, now)
        state = self.inventory.gateways[gateway]
        if reason is not None:
            state.reason = reason
        if changed:
            self._push(
                "gateway", None, gateway,
                state.location.area if state.location else None,
                _GatewayEvent("gateway", gateway, state.state, iso(now)),
            )

    def _batch(self, gateway: str, payload: bytes) -> Sequence[Reading] | None:
        """The valid readings of a telemetry batch; ``None`` (counted) when the batch is not
        its topic's gateway's. :class:`PayloadError` when the envelope is unusable."""
        batch = decode_batch_partial(payload).batch
        if batch.gateway != gateway:
            self.metrics.mqtt_invalid.labels("telemetry").inc()
            return None
        return batch.readings

    def _push(
        self, kind: str, device: str | None, gateway: str | None, area: str | None,
        body: msgspec.Struct,
    ) -> None:
        if self.hub:
            self.hub.publish(Event(kind, device, gateway, area, _encoder.encode(body)))

    def _alert_changed(self, transition: AlertTransition, alert: Alert) -> None:
        self.metrics.alert_transitions.labels(transition).inc()
        counts: dict[str, int] = {"info": 0, "warning": 0, "critical": 0}
        for active in self.alerts.active.values():
            counts[active.severity] = counts.get(active.severity, 0) + 1
        for severity, count in counts.items():
            self.metrics.alerts_active.labels(severity).set(count)
        log.info(
            "alert %s", transition,
            extra={"alert": alert.id, "rule": alert.rule, "gateway": alert.gateway,
                   "device": alert.device},
        )
        event = _AlertEvent("alert", transition, alert)
        self._push("alert", alert.device, alert.gateway, alert.area, event)
        self._history.record(transition, alert, time.time_ns())

    # -- InfluxDB ---------------------------------------------------------------------------
    async def warm(self) -> int:
        """Load the latest point of every series of the last ``warm_window`` into the state."""
        names = set(MEASUREMENTS)
        for series in await self.influx.query(show_measurements()):
            names.update(str(row[0]) for row in series.values)
        # The platform's own measurements (bookkeeping, dead letters) are not readings.
        names = {n for n in names if not n.startswith(PLATFORM_MEASUREMENT_PREFIX)}
        loaded = 0
        window, budget = self.settings.warm_window, self.settings.warm_max_series
        for name in sorted(n for n in names if NAME_RE.fullmatch(n))[:_WARM_MAX_MEASUREMENTS]:
            if loaded >= budget:
                log.warning("warm-up stopped at warm_max_series", extra={"series": loaded})
                break
            for series in await self.influx.query(select_latest(name, window, budget - loaded)):
                tags = dict(series.tags)
                gateway, device = tags.pop("gateway", ""), tags.pop("device", "")
                if not (ID_RE.fullmatch(gateway) and ID_RE.fullmatch(device)) or not series.values:
                    continue
                row = dict(zip(series.columns, series.values[0], strict=False))
                ts = int(row.pop("time"))
                quality = str(row.pop("quality", None) or "good")
                row.pop("clock", None)
                fields = {k: v for k, v in row.items() if v is not None}
                if not fields:
                    continue
                tags = {k: v for k, v in tags.items() if v}
                gw_state = self.inventory.gateway(gateway)
                known = gw_state.devices.get(device)
                latest = Latest(
                    gateway, device, name, iso(ts), ts, fields, quality, tags,
                    known.area(gw_state) if known is not None else None,
                )
                if self.live.update(latest):
                    loaded += 1
                    device_state = self.inventory.device(gateway, device)
                    if device_state.last_reading_ns is None or ts > device_state.last_reading_ns:
                        device_state.last_reading_ns = ts
        return loaded

    async def refresh_completeness(self, *, attempts: int = 3) -> None:
        """Per-gateway completeness from ingest's bookkeeping; torn rows are read again
        (up to ``attempts`` reads) and otherwise keep the gateway's previous value."""
        window = self.settings.completeness_window
        query = select_completeness(window, self.settings.completeness_settle_s)
        pending: set[str] | None = None  # gateways still to settle; None: all
        for _ in range(attempts):
            torn: set[str] = set()
            for series in await self.influx.query(query):
                gateway = series.tags.get("gateway", "")
                if not ID_RE.fullmatch(gateway) or not series.values:
                    continue
                if pending is not None and gateway not in pending:
                    continue
                completeness = completeness_of(series.columns, series.values[0], window)
                if completeness is None:
                    torn.add(gateway)
                else:
                    self.inventory.gateway(gateway).completeness = completeness
            if not torn:
                return
            self.metrics.completeness_torn_reads.inc(len(torn))
            pending = torn

    async def _completeness_loop(self) -> None:
        while True:
            try:
                await self.refresh_completeness()
            except UpstreamUnavailable as exc:
                # InfluxDB down: keep the last known completeness, say so, retry next round.
                log.warning("completeness refresh failed", extra={"error": repr(exc)})
            await asyncio.sleep(self.settings.completeness_refresh_s)

    # -- alerts -----------------------------------------------------------------------------
    async def reload_rules(self) -> None:
        rows = await asyncio.to_thread(self.db.list_rules)
        self.alerts.set_rules(Rule.from_row(row) for row in rows)

    def evict_live(self) -> None:
        """Drop live series silent for ``live_series_ttl_s``, and the devices they leave
        empty that no birth announced."""
        before = len(self.live)
        for gw, device in self.live.evict(self.settings.live_series_ttl_s):
            gateway = self.inventory.gateways.get(gw)
            state = gateway.devices.get(device) if gateway is not None else None
            if gateway is not None and state is not None and not state.announced:
                del gateway.devices[device]
        self.metrics.live_series_evicted.inc(before - len(self.live))
        self.metrics.live_series.set(len(self.live))

    async def _alerts_loop(self) -> None:
        last_reload = last_evict = time.monotonic()
        while True:
            await asyncio.sleep(self.settings.alert_tick_s)
            self.alerts.tick(time.time_ns())
            if time.monotonic() - last_evict >= _EVICT_EVERY_S:
                last_evict = time.monotonic()
                self.evict_live()
            if time.monotonic() - last_reload >= _RULES_RELOAD_S:
                last_reload = time.monotonic()
                try:
                    await self.reload_rules()
                except SQLAlchemyError as exc:
                    log.warning("alert rules reload failed", extra={"error": repr(exc)})

    def readiness(self) -> dict[str, Any]:
        return {"broker": self.broker.connected, "warmed_series": self.warmed}
