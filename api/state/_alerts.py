"""Alert rules evaluated on the live stream: threshold + duration, staleness, congestion.

::

    reading ─▶ threshold rules of its measurement ─┐  condition true since T (device time)
          └──▶ congestion rules (TrafficFlow)    ──┤  and now - T >= duration ─▶ raised
    tick (1 s, our clock) ─▶ staleness rules    ──┘  condition false          ─▶ resolved

- **threshold**: ``field op threshold`` held for ``duration_s`` by the device's own clock
  (``PM2.5 > 35 for 600 s``). Pending time restarts whenever one reading breaks the run.
- **congestion**: ``averageVehicleSpeed < ratio x free-flow speed`` for ``duration_s``; the
  free-flow speed comes from the device's ``meta.freeFlowSpeed`` (km/h) in its birth, or the
  ``free_flow_speed_kmh`` setting.
- **staleness**: a gateway offline (death received) or silent for ``duration_s`` by the API's
  clock.

An alert's id is stable for one episode (rule, subject, start time). Rules are stored in the
operator database; each API replica evaluates them on its own subscription.

Flapping is bounded: after an alert resolves, its rule and subject are not raised again for
``min_hold_s`` by the API's clock (device timestamps cannot shorten it), so a condition that
changes on every reading costs at most one raised and one resolved transition per hold (in
the alert history and on the live streams), not two per reading.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import hashlib
import logging
import operator
import time
from collections.abc import Callable, Iterable
from typing import Final, Literal, Self

import msgspec
from sqlalchemy.exc import SQLAlchemyError

from api._metrics import ApiMetrics
from api._params import iso
from api.state._live import GatewayState, Inventory, Latest
from api.storage import AlertRule, Database
from telemetry import MEASUREMENTS

__all__ = ["Alert", "AlertEngine", "AlertHistory", "AlertTransition", "Rule"]

_NS: Final = 1_000_000_000
_OPS: Final[dict[str, Callable[[float, float], bool]]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
}
AlertTransition = Literal["raised", "resolved", "acknowledged"]


class Rule(msgspec.Struct, frozen=True, kw_only=True):
    """An alert rule as the engine evaluates it (and as ``/v1/alert-rules`` shows it)."""

    id: int
    name: str
    kind: str
    measurement: str | None
    field: str | None
    op: str | None
    threshold: float | None
    ratio: float | None
    duration_s: float
    severity: str
    enabled: bool

    @classmethod
    def from_row(cls, row: AlertRule) -> Self:
        return cls(**{name: getattr(row, name) for name in cls.__struct_fields__})


class Alert(msgspec.Struct, kw_only=True):
    id: str
    rule_id: int
    rule: str
    kind: str
    severity: str
    gateway: str
    device: str | None = None
    measurement: str | None = None
    field: str | None = None
    value: float | None = None
    threshold: float | None = None
    started: str
    started_ns: int
    message: str
    area: str | None = None
    acknowledged: bool = False
    ack_by: str | None = None
    ack_at: str | None = None
    ack_note: str | None = None


#: UCUM-style symbols of the wire contract, as people write them.
_DISPLAY_UNITS: Final = {
    "ug/m3": "µg/m³", "mg/m3": "mg/m³", "m3": "m³", "m3/h": "m³/h", "Cel": "°C",
    "deg": "°", "%": "%", "1": "", "-": "", "dB(A)": "dB(A)", "dBA": "dB(A)",
}
_FIELD_LABELS: Final = {"pm25": "PM2.5", "pm10": "PM10", "no2": "NO₂", "o3": "O₃"}


def display_unit(unit: str | None) -> str:
    """``ug/m3`` -> ``µg/m³``, ``Cel`` -> ``°C``, ``deg`` -> ``°``; a count (``1``) -> ``""``."""
    if not unit:
        return ""
    return _DISPLAY_UNITS.get(unit, unit)


def field_label(field: str) -> str:
    return _FIELD_LABELS.get(field, field)


def _alert_id(rule_id: int, subject: str, started_ns: int) -> str:
    return hashlib.blake2b(f"{rule_id}|{subject}|{started_ns}".encode(), digest_size=8).hexdigest()


class AlertEngine:
    """Holds rules, pending conditions and active alerts; reports transitions to a callback."""

    def __init__(
        self,
        *,
        inventory: Inventory,
        free_flow_kmh: float,
        on_change: Callable[[AlertTransition, Alert], None],
        min_hold_s: float = 0.0,
        on_held: Callable[[], None] = lambda: None,
    ) -> None:
        self._inventory = inventory
        self._min_hold_s = min_hold_s
        self._on_held = on_held
        #: (rule id, subject) -> time.monotonic() its last alert resolved (within the hold)
        self._resolved_at: dict[tuple[int, str], float] = {}
        self._free_flow = free_flow_kmh
        self._on_change = on_change
        self._by_measurement: dict[str, list[Rule]] = {}
        self._staleness: list[Rule] = []
        self._pending: dict[tuple[int, str], int] = {}
        self.active: dict[str, Alert] = {}
        self._active_by_subject: dict[tuple[int, str], str] = {}

    def set_rules(self, rules: Iterable[Rule]) -> None:
        """Replace the rules; alerts of removed or disabled rules are resolved."""
        by_measurement: dict[str, list[Rule]] = {}
        staleness: list[Rule] = []
        keep: set[int] = set()
        for rule in rules:
            if not rule.enabled:
                continue
            keep.add(rule.id)
            if rule.kind == "staleness":
                staleness.append(rule)
            elif rule.kind == "congestion":
                by_measurement.setdefault(rule.measurement or "TrafficFlowObserved", []).append(
                    rule
                )
            elif rule.measurement is not None:
                by_measurement.setdefault(rule.measurement, []).append(rule)
        self._by_measurement, self._staleness = by_measurement, staleness
        self._pending = {k: v for k, v in self._pending.items() if k[0] in keep}
        for (rule_id, subject), alert_id in list(self._active_by_subject.items()):
            if rule_id not in keep:
                self._resolve(rule_id, subject, alert_id)

    # -- evaluation -------------------------------------------------------------------------
    def on_reading(self, latest: Latest) -> None:
        rules = self._by_measurement.get(latest.measurement)
        if not rules:
            return
        for rule in rules:
            if rule.kind == "congestion":
                self._congestion(rule, latest)
            else:
                self._threshold(rule, latest)

    def _threshold(self, rule: Rule, latest: Latest) -> None:
        value = latest.fields.get(rule.field or "")
        if not isinstance(value, int | float) or isinstance(value, bool) or rule.op not in _OPS:
            return
        threshold = rule.threshold if rule.threshold is not None else 0.0
        holds = _OPS[rule.op](float(value), threshold)
        self._evaluate(rule, latest, holds, float(value), threshold)

    def _congestion(self, rule: Rule, latest: Latest) -> None:
        speed = latest.fields.get(rule.field or "averageVehicleSpeed")
        if not isinstance(speed, int | float) or isinstance(speed, bool):
            return
        free = self.free_flow_speed(latest.gateway, latest.device)
        limit = (rule.ratio if rule.ratio is not None else 0.3) * free
        self._evaluate(rule, latest, float(speed) < limit, float(speed), limit)

    def _message(self, rule: Rule, latest: Latest, value: float, threshold: float) -> str:
        """What an alert of a reading rule says (made when it is raised, not per reading)."""
        if rule.kind == "congestion":
            share = f"{(rule.ratio if rule.ratio is not None else 0.3) * 100:g} %"
            return f"speed {value:g} km/h under {threshold:g} km/h ({share} of free flow)"
        unit = self._unit(latest, rule.field or "")
        shown = latest.fields.get(rule.field or "")
        return f"{field_label(rule.field or '')} {shown:g}{unit} {rule.op} {threshold:g}{unit}"

    def _unit(self, latest: Latest, field: str) -> str:
        """The field's unit for people (" µg/m³", " %", "" for a count), after a space."""
        state = self._inventory.gateways.get(latest.gateway)
        dev = state.devices.get(latest.device) if state is not None else None
        unit = dev.measurements.get(latest.measurement, {}).get(field) if dev else None
        if unit is None:
            spec = MEASUREMENTS.get(latest.measurement)
            known = spec.fields.get(field) if spec is not None else None
            unit = known.unit if known is not None else ""
        shown = display_unit(unit)
        return "" if not shown else shown if shown == "°" else f" {shown}"

    def free_flow_speed(self, gateway: str, device: str) -> float:
        state = self._inventory.gateways.get(gateway)
        dev = state.devices.get(device) if state is not None else None
        if dev is not None:
            raw = dev.meta.get("freeFlowSpeed")
            if raw is not None:
                try:
                    value = float(raw)
                except ValueError:
                    return self._free_flow
                if value > 0:
                    return value
        return self._free_flow

    def _evaluate(
        self, rule: Rule, latest: Latest, holds: bool, value: float, threshold: float
    ) -> None:
        lane = latest.tags.get("lane") if latest.tags else None
        subject = f"{latest.gateway}/{latest.device}" + (f"/lane={lane}" if lane else "")
        key = (rule.id, subject)
        if not holds:
            self._pending.pop(key, None)
            alert_id = self._active_by_subject.get(key)
            if alert_id is not None:
                self._resolve(rule.id, subject, alert_id)
            return
        since = self._pending.setdefault(key, latest.ts_ns)
        if key in self._active_by_subject:
            alert = self.active[self._active_by_subject[key]]
            alert.value = value
            return
        if latest.ts_ns - since >= rule.duration_s * _NS and self._may_raise(key):
            self._raise(
                rule, subject, since,
                gateway=latest.gateway, device=latest.device, measurement=latest.measurement,
                field=rule.field, value=value, threshold=threshold,
                message=self._message(rule, latest, value, threshold), area=latest.area,
            )

    def _may_raise(self, key: tuple[int, str]) -> bool:
        """Whether ``key`` resolved long enough ago (``min_hold_s``) to be raised again."""
        resolved = self._resolved_at.get(key)
        if resolved is None:
            return True
        if time.monotonic() - resolved >= self._min_hold_s:
            del self._resolved_at[key]
            return True
        self._on_held()
        return False

    def tick(self, now_ns: int) -> None:
        """Evaluate staleness rules against the gateways' last signs of life."""
        if self._resolved_at:
            cutoff = time.monotonic() - self._min_hold_s
            self._resolved_at = {k: t for k, t in self._resolved_at.items() if t > cutoff}
        for rule in self._staleness:
            for gateway in self._inventory.gateways.values():
                self._stale(rule, gateway, now_ns)

    def _stale(self, rule: Rule, gateway: GatewayState, now_ns: int) -> None:
        key = (rule.id, gateway.id)
        since = gateway.since_ns if gateway.state == "offline" else gateway.last_seen_ns
        holds = now_ns - since >= rule.duration_s * _NS
        alert_id = self._active_by_subject.get(key)
        if holds and alert_id is None and self._may_raise(key):
            what = "offline" if gateway.state == "offline" else "silent"
            # When it started is the alert's ``started`` (clients show it in their own time
            # zone); the text carries no raw timestamp.
            self._raise(
                rule, gateway.id, since, gateway=gateway.id,
                message=f"gateway {gateway.id} {what} for {rule.duration_s / 60:g} min or more",
                area=gateway.location.area if gateway.location else None,
            )
        elif not holds and alert_id is not None:
            self._resolve(rule.id, gateway.id, alert_id)

    # -- transitions ------------------------------------------------------------------------
    def _raise(
        self, rule: Rule, subject: str, since: int, *, gateway: str, message: str,
        device: str | None = None, measurement: str | None = None, field: str | None = None,
        value: float | None = None, threshold: float | None = None, area: str | None = None,
    ) -> None:
        alert = Alert(
            id=_alert_id(rule.id, subject, since), rule_id=rule.id, rule=rule.name,
            kind=rule.kind, severity=rule.severity, gateway=gateway, device=device,
            measurement=measurement, field=field, value=value, threshold=threshold,
            started=iso(since), started_ns=since, message=message, area=area,
        )
        self.active[alert.id] = alert
        self._active_by_subject[(rule.id, subject)] = alert.id
        self._on_change("raised", alert)

    def _resolve(self, rule_id: int, subject: str, alert_id: str) -> None:
        self._active_by_subject.pop((rule_id, subject), None)
        alert = self.active.pop(alert_id, None)
        if alert is not None:
            if self._min_hold_s > 0:
                self._resolved_at[(rule_id, subject)] = time.monotonic()
            self._on_change("resolved", alert)

    def acknowledge(self, alert_id: str, *, by: str, at: str, note: str) -> Alert | None:
        alert = self.active.get(alert_id)
        if alert is None:
            return None
        alert.acknowledged, alert.ack_by, alert.ack_at, alert.ack_note = True, by, at, note
        self._on_change("acknowledged", alert)
        return alert


log = logging.getLogger("api.alerts")


class AlertHistory:
    """Stores every alert transition in the operator database, off the event loop.

    Transitions are buffered (at most ``max_pending``; beyond it the oldest are dropped and
    counted) and written once a second by :meth:`run`, which also prunes entries older than
    ``keep_days`` hourly and writes what is left when it is cancelled. A failed write keeps
    the buffer for the next round.
    """

    def __init__(
        self, db: Database, metrics: ApiMetrics, *, keep_days: int, max_pending: int = 10_000
    ) -> None:
        self._db = db
        self._metrics = metrics
        self._keep = dt.timedelta(days=keep_days)
        self._pending: collections.deque[dict[str, object]] = collections.deque()
        self._max = max_pending
        self._lock = asyncio.Lock()

    def record(self, transition: AlertTransition, alert: Alert, now_ns: int) -> None:
        if transition == "raised":
            at_ns = alert.started_ns
        elif transition == "acknowledged" and alert.ack_at:
            at_ns = _parse_ns(alert.ack_at, now_ns)
        else:
            at_ns = now_ns
        if len(self._pending) >= self._max:
            self._pending.popleft()
            self._metrics.alert_history_failed.labels("dropped").inc()
        self._pending.append({
            "alert_id": alert.id, "transition": transition, "at": _utc(at_ns),
            "rule_id": alert.rule_id, "rule": alert.rule[:128], "kind": alert.kind,
            "severity": alert.severity, "gateway": alert.gateway, "device": alert.device,
            "area": alert.area, "message": alert.message[:512], "value": alert.value,
            "by_name": alert.ack_by if transition == "acknowledged" else None,
            "note": alert.ack_note if transition == "acknowledged" else None,
        })

    async def flush(self) -> None:
        async with self._lock:
            batch, self._pending = self._pending, collections.deque()
            if not batch:
                return
            try:
                added = await asyncio.to_thread(self._db.record_alert_events, list(batch))
            except Exception as exc:  # noqa: BLE001 (the history must never stop the API)
                self._metrics.alert_history_failed.labels("retried").inc()
                log.warning("alert history write failed", extra={"error": repr(exc)})
                batch.extend(self._pending)  # oldest first, then what came meanwhile
                while len(batch) > self._max:
                    batch.popleft()
                    self._metrics.alert_history_failed.labels("dropped").inc()
                self._pending = batch
                return
            self._metrics.alert_history_written.inc(added)

    async def run(self, interval_s: float = 1.0, prune_every_s: float = 3600.0) -> None:
        last_prune = 0.0
        try:
            while True:
                await asyncio.sleep(interval_s)
                await self.flush()
                if time.monotonic() - last_prune >= prune_every_s:
                    last_prune = time.monotonic()
                    before = dt.datetime.now(dt.UTC) - self._keep
                    try:
                        await asyncio.to_thread(self._db.prune_alert_events, before)
                    except SQLAlchemyError as exc:
                        log.warning("alert history prune failed", extra={"error": repr(exc)})
        finally:
            await self.flush()


def _utc(ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ns / _NS, dt.UTC)


def _parse_ns(text: str, default: int) -> int:
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return default
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp() * _NS)
