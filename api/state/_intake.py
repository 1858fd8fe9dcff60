"""Telemetry into the live state: followed readings pushed first, the bookkeeping after.

::

    broker link (event loop) ─▶ Services.receive ─▶ LiveIntake.take(gateway, payload)
        │  no followed device's id in the bytes (Hub.may_follow_any) ─▶ queued undecoded
        │  else decode; readings some live client follows (Hub.wants) ─▶ Hub.publish   now
        └▶ backlog (FIFO of batches) ──▶ task api[<id>].live-intake: apply, ~1 ms per loop turn
                                           (decode), LiveState, Inventory, AlertEngine

Why: the fleet publishes a second's batches together, a thousand at a time, and applying a
batch (live state, inventory, alerts) costs several times what decoding it and asking the hub
costs. Applied in line, a followed reading waited for the bookkeeping of every batch ahead of
it in the burst; taken this way it waits only for a search of their bytes, and for the
decoding of those that may hold a followed reading (docs/api.md "Live push latency").

Guarantees:

- A gateway's batches are applied in the order received, each exactly once (a batch queued
  undecoded is decoded when it is applied; a bad one is counted then), and the gateways'
  batches in the order received but for those a status applied early (below); the state
  and the alerts end as when everything was applied in line. What a REST read returns lags the
  broker by the backlog (``smartcity_api_live_apply_delay_seconds``; measured during the
  benchmark's live run on a busy 2-core machine: mean 57-185 ms, p99 <= 1 s).
- A followed reading is pushed once, before it is applied, when it is not older than the
  series' applied reading; one still queued behind it in the backlog is not looked at.
- The backlog is bounded (``backlog_max`` batches): past it, the oldest batches are applied
  at once, in line, so a loop that cannot keep up slows the broker consumer (the session then
  stops reading the socket and TCP pushes back on the broker) instead of queueing without end.
- A gateway's birth or death (:meth:`LiveIntake.flush_gateway`) applies that gateway's queued
  batches first, oldest first: a reading is always placed with its gateway's inventory as it
  was when the reading arrived. Order matters only within a gateway (its area, devices and
  alerts are its own), so the other gateways' batches stay queued, in their order::

      backlog (arrival order)   A1 B1 A2 B2 C1        birth of B: B1, B2 applied now
      after                     A1 .. A2 .. C1        (marked; skipped when reached)
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import msgspec

from api._metrics import ApiMetrics
from api._params import iso
from api.state._alerts import AlertEngine
from api.state._areas import AreaMap
from api.state._hub import MEASUREMENT_KIND, Event, Hub
from api.state._live import DeviceState, GatewayState, Inventory, Latest, LiveState
from telemetry import Reading

log: Final = logging.getLogger("api")
#: An apply error is logged at most once per this many seconds (each one is counted).
_ERROR_LOG_EVERY_S: Final = 60.0

__all__ = ["LiveIntake"]

#: Loop time one turn of the intake task spends applying the backlog.
APPLY_SLICE_S: Final = 0.001
#: (gateway, payload) -> the batch's valid readings; ``None`` when it is refused (counted).
Decoder = Callable[[str, bytes], Sequence[Reading] | None]
_encoder: Final = msgspec.json.Encoder()


class _Queued:
    """One batch taken: readings, or the payload still to decode; ``applied`` once its
    gateway's status applied it out of turn (then skipped when the backlog reaches it)."""

    __slots__ = ("applied", "batch", "gateway", "taken")

    def __init__(self, gateway: str, batch: Sequence[Reading] | bytes, taken: float) -> None:
        self.gateway = gateway
        self.batch = batch
        #: ``time.perf_counter()`` when taken (``smartcity_api_live_apply_delay_seconds``).
        self.taken = taken
        self.applied = False


class _ReadingEvent(msgspec.Struct):
    """A reading as the live streams push it."""

    type: str
    kind: str
    reading: Latest


class LiveIntake:
    """Applies telemetry batches to the live state, inventory, alerts and hub.

    :meth:`take` is the broker's path (push now, apply from the backlog); :meth:`flush` and
    :meth:`flush_gateway` apply what is queued at once (for a gateway's status change, and
    for callers that read the state right after). ``decode`` turns a telemetry payload into
    readings (and counts a refused one)."""

    def __init__(
        self,
        *,
        inventory: Inventory,
        live: LiveState,
        hub: Hub,
        alerts: AlertEngine,
        areas: AreaMap | None,
        metrics: ApiMetrics,
        decode: Decoder,
        backlog_max: int = 5000,
    ) -> None:
        self._inventory = inventory
        self._live = live
        self._hub = hub
        self._alerts = alerts
        self._areas = areas
        self._metrics = metrics
        self._decode = decode
        self.backlog_max = backlog_max
        #: Every batch taken, oldest first; those a status applied out of turn are still
        #: here (``applied``, counted in ``_skipped``) until reached or compacted away.
        self._backlog: collections.deque[_Queued] = collections.deque()
        #: The same batches not applied yet, per gateway, oldest first.
        self._by_gateway: dict[str, collections.deque[_Queued]] = {}
        self._pending = 0
        self._skipped = 0
        self._ready = asyncio.Event()
        self._error_logged = -_ERROR_LOG_EVERY_S

    def __len__(self) -> int:
        """Batches taken and not applied yet."""
        return self._pending

    # -- the broker's path ------------------------------------------------------------------
    def take(self, gateway: str, payload: bytes) -> None:
        """Push the readings somebody follows, queue the batch for :meth:`run` (undecoded
        when no followed device occurs in it: decoded when applied)."""
        batch: Sequence[Reading] | bytes = payload
        if self._hub.may_follow_any(payload):
            readings = self._decode(gateway, payload)
            if readings is None:
                return
            self._push_followed(gateway, readings)
            batch = readings
        queued = _Queued(gateway, batch, time.perf_counter())
        self._backlog.append(queued)
        mine = self._by_gateway.get(gateway)
        if mine is None:
            mine = self._by_gateway[gateway] = collections.deque()
        mine.append(queued)
        self._pending += 1
        while self._pending > self.backlog_max:
            self._apply_oldest()
        self._ready.set()

    def flush(self) -> None:
        """Apply the whole backlog now, oldest first."""
        while self._pending:
            self._apply_oldest()
        self._backlog.clear()  # only batches applied out of turn are left
        self._skipped = 0

    def flush_gateway(self, gateway: str) -> None:
        """Apply ``gateway``'s queued batches now, oldest first (before its birth or death);
        the other gateways' stay queued, in their order."""
        mine = self._by_gateway.pop(gateway, None)
        if mine is None:
            return
        for queued in mine:  # the bookkeeping first: consistent even if an apply raises
            queued.applied = True
            self._pending -= 1
            self._skipped += 1
        try:
            for queued in mine:
                self._apply(queued)
        finally:
            backlog = self._backlog
            if self._skipped * 2 > len(backlog):  # mostly skipped: drop them (amortised O(1))
                self._backlog = collections.deque(q for q in backlog if not q.applied)
                self._skipped = 0

    def apply_backlog(self, budget_s: float) -> None:
        """Apply the oldest batches for about ``budget_s`` (one at least)."""
        clock = time.perf_counter
        until = clock() + budget_s
        while self._pending:
            self._apply_oldest()
            if clock() >= until:
                return

    async def run(self) -> None:
        """Apply the backlog a slice per loop turn, so that the broker consumer, the live
        clients' senders and HTTP requests get the loop between slices."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._pending:
                self.apply_backlog(APPLY_SLICE_S)
                await asyncio.sleep(0)

    def _apply_oldest(self) -> None:
        """Apply the oldest batch not applied yet (there is one: ``_pending`` > 0)."""
        backlog = self._backlog
        queued = backlog.popleft()
        while queued.applied:
            self._skipped -= 1
            queued = backlog.popleft()
        gateway = queued.gateway
        mine = self._by_gateway[gateway]
        mine.popleft()  # ``queued``: a gateway's batches are in the backlog's order
        if not mine:
            del self._by_gateway[gateway]
        self._pending -= 1
        self._apply(queued)

    def _apply(self, queued: _Queued) -> None:
        batch, gateway = queued.batch, queued.gateway
        try:
            readings = self._decode(gateway, batch) if isinstance(batch, bytes) else batch
            if readings is not None:
                self._apply_readings(gateway, readings)
        except Exception:  # one batch never stops the live state (a bug: logged, counted)
            self._metrics.live_apply_errors.inc()
            now = time.monotonic()
            if now >= self._error_logged + _ERROR_LOG_EVERY_S:
                self._error_logged = now
                log.exception("a telemetry batch could not be applied; skipped",
                              extra={"gateway": gateway})
        self._metrics.live_apply_delay.observe(time.perf_counter() - queued.taken)

    def _push_followed(self, gateway: str, readings: Sequence[Reading]) -> None:
        hub, live = self._hub, self._live
        gw_state = self._inventory.gateways.get(gateway)
        devices: Mapping[str, DeviceState] = gw_state.devices if gw_state is not None else {}
        for r in readings:
            if not hub.follows(r.device):
                continue
            kind = MEASUREMENT_KIND.get(r.measurement, "other")
            area = self._area(gw_state, devices.get(r.device), r.fields)
            if not hub.wants(kind, r.device, area):
                continue
            latest = Latest(
                gateway, r.device, r.measurement, iso(r.ts), r.ts, r.fields, r.quality, r.tags, area
            )
            if live.keeps(latest):
                self._publish(kind, latest)

    # -- applying ---------------------------------------------------------------------------
    def _apply_readings(self, gateway: str, readings: Sequence[Reading]) -> None:
        """Readings of one batch into the live state, the inventory and the alerts (their
        followed readings were pushed when taken).

        The per-reading work here is what a burst of a thousand gateways costs the event
        loop, so what is the same for a whole batch (clocks, the gateway, the formatted time
        of a shared timestamp) is done once, and a reading's decoded fields and tags are kept
        as they are (nothing changes them)."""
        inventory, live = self._inventory, self._live
        gw_state = inventory.gateway(gateway)
        gw_state.last_seen_ns = time.time_ns()
        seen = time.monotonic()
        devices = gw_state.devices
        on_reading = self._alerts.on_reading
        applied = 0
        refused = live.refused
        last_ts, last_time = -1, ""
        for r in readings:
            device = devices.get(r.device)
            fields = r.fields
            area = self._area(gw_state, device, fields)
            ts = r.ts
            if ts != last_ts:  # the readings of one batch mostly share their timestamp
                last_ts, last_time = ts, iso(ts)
            latest = Latest(
                gateway, r.device, r.measurement, last_time, ts, fields, r.quality, r.tags, area
            )
            if not live.update(latest, seen):
                continue
            if device is None:  # only a device with a live series enters the inventory
                device = inventory.device(gateway, r.device)
            applied += 1
            if device.last_reading_ns is None or ts > device.last_reading_ns:
                device.last_reading_ns = ts
            on_reading(latest)
        metrics = self._metrics
        metrics.readings.inc(applied)
        metrics.live_series.set(len(live))
        if live.refused > refused:
            metrics.live_series_refused.inc(live.refused - refused)

    def _area(
        self, gw_state: GatewayState | None, device: DeviceState | None, fields: dict[str, Any]
    ) -> str | None:
        lat, lon = fields.get("latitude"), fields.get("longitude")
        if isinstance(lat, float | int) and isinstance(lon, float | int):
            # A reading with its own position is where it is now, not where its agent
            # started (the birth's area). (A bool is no position, and never a field.)
            return self._areas.locate(lat, lon) if self._areas is not None else None
        if device is not None:
            return device.area(gw_state)
        if gw_state is not None and gw_state.location is not None:
            return gw_state.location.area
        return None

    def _publish(self, kind: str, latest: Latest) -> None:
        body = _encoder.encode(_ReadingEvent("reading", kind, latest))
        self._hub.publish(Event(kind, latest.device, latest.gateway, latest.area, body))
