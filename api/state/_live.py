"""In-memory state from the broker: latest reading per series, gateway and device inventory.

Everything here is touched only on the event loop thread (the broker thread hands messages
over, see ``_broker.py``), so no locks. The state is a cache of what the broker and InfluxDB
hold: a restarted API rebuilds it from the retained status messages and a warm-up query.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from telemetry import Birth, Death, DeviceInfo, Location

__all__ = [
    "Completeness",
    "DeviceState",
    "GatewayState",
    "Inventory",
    "Latest",
    "LiveState",
    "completeness_of",
    "series_key",
]


def series_key(measurement: str, tags: Mapping[str, str]) -> str:
    if not tags:
        return measurement
    if len(tags) == 1:  # a lane, a phase: the common case, without sorting
        ((k, v),) = tags.items()
        return f"{measurement},{k}={v}"
    return measurement + "," + ",".join(f"{k}={v}" for k, v in sorted(tags.items()))


class Latest(msgspec.Struct, gc=False, omit_defaults=True):
    """The latest reading of one series (device, measurement, reading tags)."""

    gateway: str
    device: str
    measurement: str
    time: str
    ts_ns: int
    fields: dict[str, Any]
    quality: str = "good"
    tags: dict[str, str] = {}
    area: str | None = None


class Completeness(msgspec.Struct, frozen=True):
    """Batches received against batches expected from the seq range, over a window."""

    window: str
    received: int
    expected: int
    missing: int
    ratio: float
    readings: int


def completeness_of(
    columns: list[str], values: list[Any], window: str
) -> Completeness | None:
    """Completeness from one row of :func:`api.storage.completeness`; ``None`` for a torn row.

    InfluxDB 1.x builds one iterator per aggregate, so a row read while a gateway's batches
    are being written can mix two moments: ``count(distinct(seq))`` already counting a batch
    that ``max(seq)`` does not see yet. More distinct seqs than the seq range holds cannot
    happen in one moment; such a row is torn and must be read again, not shown. (The other
    way round, a count from just before a newer max, reads as one batch missing until the
    next refresh.)
    """
    row = dict(zip(columns, values, strict=False))
    received = int(row.get("received") or 0)
    lo, hi = row.get("min_seq"), row.get("max_seq")
    if lo is None or hi is None:
        return None
    expected = int(hi) - int(lo) + 1
    if received > expected:
        return None
    return Completeness(
        window=window, received=received, expected=expected, missing=expected - received,
        ratio=received / expected if expected else 1.0, readings=int(row.get("readings") or 0),
    )


@dataclass(slots=True)
class DeviceState:
    id: str
    gateway: str
    kind: str = "unknown"
    measurements: dict[str, dict[str, str]] = field(default_factory=dict)
    location: Location | None = None
    meta: dict[str, str] = field(default_factory=dict)
    announced: bool = False
    last_reading_ns: int | None = None

    def area(self, gateway: GatewayState | None) -> str | None:
        if self.location is not None and self.location.area:
            return self.location.area
        if gateway is not None and gateway.location is not None:
            return gateway.location.area
        return None


@dataclass(slots=True)
class GatewayState:
    id: str
    state: str = "unknown"  # online | offline | unknown (seen in telemetry only)
    status_ts_ns: int | None = None
    #: Our clock (ns) when the state last changed, and when anything last arrived.
    since_ns: int = 0
    last_seen_ns: int = 0
    agent: str | None = None
    config_version: int | None = None
    location: Location | None = None
    reason: str | None = None
    devices: dict[str, DeviceState] = field(default_factory=dict)
    health: dict[str, Any] | None = None
    config_reported: dict[str, Any] | None = None
    completeness: Completeness | None = None


class Inventory:
    """Gateways and their devices from retained births/deaths and from telemetry."""

    def __init__(self) -> None:
        self.gateways: dict[str, GatewayState] = {}

    def gateway(self, gw: str) -> GatewayState:
        state = self.gateways.get(gw)
        if state is None:
            state = self.gateways[gw] = GatewayState(gw, since_ns=time.time_ns())
        return state

    def device(self, gw: str, device: str) -> DeviceState:
        gateway = self.gateway(gw)
        state = gateway.devices.get(device)
        if state is None:
            state = gateway.devices[device] = DeviceState(device, gw)
        return state

    def apply_status(self, gw: str, status: Birth | Death, now_ns: int) -> bool:
        """Record a birth or death; return whether the state changed."""
        gateway = self.gateway(gw)
        gateway.last_seen_ns = now_ns
        new_state = "online" if isinstance(status, Birth) else "offline"
        changed = gateway.state != new_state
        if changed:
            gateway.since_ns = now_ns
        gateway.state = new_state
        gateway.status_ts_ns = status.ts
        if isinstance(status, Birth):
            gateway.agent = status.agent
            gateway.config_version = status.config_version
            gateway.location = status.location
            gateway.reason = None
            for info in status.devices:
                self._announce(gateway, info)
        else:
            gateway.reason = status.reason
        return changed

    def _announce(self, gateway: GatewayState, info: DeviceInfo) -> None:
        device = gateway.devices.get(info.id)
        if device is None:
            device = gateway.devices[info.id] = DeviceState(info.id, gateway.id)
        device.kind = info.kind
        device.measurements = {m: dict(f) for m, f in info.measurements.items()}
        device.location = info.location
        device.meta = dict(info.meta)
        device.announced = True

    def iter_devices(self) -> Iterator[tuple[GatewayState, DeviceState]]:
        for gateway in self.gateways.values():
            for device in gateway.devices.values():
                yield gateway, device

    def area_of(self, gw: str, device: str) -> str | None:
        gateway = self.gateways.get(gw)
        if gateway is None:
            return None
        state = gateway.devices.get(device)
        return state.area(gateway) if state is not None else None


class LiveState:
    """Latest reading per (gateway, device) and series key (measurement + reading tags).

    Bounded against a gateway that invents devices and tag values: at most
    ``max_series_per_gateway`` series per gateway (a reading of a new series past it is
    refused and counted in :attr:`refused`), and :meth:`evict` drops series that had no
    reading for a while (by the API's clock: device timestamps cannot keep a series alive).
    """

    def __init__(self, *, max_series_per_gateway: int = 1_000_000) -> None:
        self.by_device: dict[tuple[str, str], dict[str, Latest]] = {}
        self.by_measurement: dict[str, dict[tuple[str, str, str], Latest]] = {}
        self.max_series_per_gateway = max_series_per_gateway
        #: Readings of new series refused because their gateway was at the cap.
        self.refused = 0
        self._per_gateway: dict[str, int] = {}
        #: (gateway, device, series key) -> time.monotonic() of its last update
        self._seen: dict[tuple[str, str, str], float] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def series_of(self, gateway: str) -> int:
        return self._per_gateway.get(gateway, 0)

    def keeps(self, latest: Latest) -> bool:
        """Whether :meth:`update` would keep ``latest`` now (nothing is changed)."""
        key = series_key(latest.measurement, latest.tags)
        series = self.by_device.get((latest.gateway, latest.device))
        held = None if series is None else series.get(key)
        if held is None:
            return self._per_gateway.get(latest.gateway, 0) < self.max_series_per_gateway
        return held.ts_ns <= latest.ts_ns

    def update(self, latest: Latest, now: float | None = None) -> bool:
        """Keep ``latest`` if it is not older than what is held and its gateway has room for
        a new series; return whether it was kept. ``now``: ``time.monotonic()``, when the
        caller has it (one clock read for a whole batch)."""
        measurement = latest.measurement
        key = series_key(measurement, latest.tags) if latest.tags else measurement
        gw, device = latest.gateway, latest.device
        series = self.by_device.get((gw, device))
        held = None if series is None else series.get(key)
        if held is not None and held.ts_ns > latest.ts_ns:
            return False
        if held is None:
            count = self._per_gateway.get(gw, 0)
            if count >= self.max_series_per_gateway:
                self.refused += 1
                return False
            self._per_gateway[gw] = count + 1
        if series is None:
            series = self.by_device[(gw, device)] = {}
        series[key] = latest
        full_key = (gw, device, key)
        rows = self.by_measurement.get(measurement)
        if rows is None:
            rows = self.by_measurement[measurement] = {}
        rows[full_key] = latest
        self._seen[full_key] = time.monotonic() if now is None else now
        return True

    def evict(self, older_than_s: float) -> list[tuple[str, str]]:
        """Drop series not updated for ``older_than_s``; return the (gateway, device) pairs
        left without any series."""
        cutoff = time.monotonic() - older_than_s
        emptied: list[tuple[str, str]] = []
        for full_key in [k for k, t in self._seen.items() if t < cutoff]:
            gw, device, key = full_key
            del self._seen[full_key]
            series = self.by_device.get((gw, device), {})
            latest = series.pop(key, None)
            if latest is not None:
                rows = self.by_measurement.get(latest.measurement, {})
                rows.pop(full_key, None)
                if not rows:
                    self.by_measurement.pop(latest.measurement, None)
            if not series:
                self.by_device.pop((gw, device), None)
                emptied.append((gw, device))
            left = self._per_gateway.get(gw, 1) - 1
            if left > 0:
                self._per_gateway[gw] = left
            else:
                self._per_gateway.pop(gw, None)
        return emptied

    def device(self, gateway: str, device: str) -> list[Latest]:
        series = self.by_device.get((gateway, device))
        return [] if series is None else [series[k] for k in sorted(series)]

    def measurement(self, measurement: str) -> list[Latest]:
        rows = self.by_measurement.get(measurement, {})
        return [rows[k] for k in sorted(rows)]
