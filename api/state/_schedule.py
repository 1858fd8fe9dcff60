"""Schedule adherence: each vehicle's delay against its GTFS trip, and its headway.

For every vehicle of the live state that reports a ``tripId`` of the feed::

    position ──project──▶ trip path (straight lines between its stops; off route beyond
                          gtfs_off_route_m) ──▶ distance along ──▶ scheduled time there
                          (between two stops: linear from departure to arrival; at a stop:
                          mid-dwell; at the first stop: its departure, never early)
    delay_s   = reading time - scheduled time, on the service day (yesterday, today,
                tomorrow in the agency's zone, running the trip's service) that gives the
                smallest |delay|
    headway_s = reading time - when the bus ahead (same route and direction, or same first
                and last stop when the feed has no direction_id; the one that passed this
                place last) passed here: its scheduled time here + its delay
    scheduledHeadway_s = the same gap in the timetable
    late      = delay_s > late_threshold_s
    bunched   = headway_s < bunched_ratio * scheduledHeadway_s

The delay of a bus is assumed to hold between its position and the next stops (no
prediction model): the TripUpdates feed adds it to every remaining stop's times.
Results are cached for a second: the adherence endpoint, the TripUpdates feed and the
metrics share one computation per second whatever the request rate; for requests it runs in
a worker thread on a snapshot of the vehicles (the live state is read in the event loop).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Literal, get_args

import msgspec
import numpy as np
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from api.state._gtfs_feed import GtfsFeed, TripSchedule
from api.state._live import LiveState
from api.state._transport import VehicleOut, vehicles

__all__ = [
    "Adherence",
    "AdherenceStatus",
    "Schedule",
    "ScheduleCollector",
    "VehicleAdherence",
    "adherence",
]

_STOP_RADIUS_M: Final = 10.0
#: Vehicles further along a route looked at to find the one ahead.
_LEADER_CANDIDATES: Final = 8
_CACHE_S: Final = 1.0

#: (index in the result, x, y, delay, distance along its trip)
_Placed = tuple[int, float, float, float, float]

AdherenceStatus = Literal[
    "in_transit", "at_stop", "at_terminus", "off_route", "unknown_trip", "no_trip", "no_position"
]


class Adherence(msgspec.Struct):
    """One vehicle against its timetable (``null`` where it cannot be said)."""

    id: str
    gateway: str
    device: str
    routeId: str | None
    tripId: str | None
    #: The service day of the trip (YYYYMMDD), as GTFS-Realtime ``start_date``.
    startDate: str | None
    directionId: int | None
    status: AdherenceStatus
    delay_s: int | None
    headway_s: int | None
    scheduledHeadway_s: int | None
    late: bool
    bunched: bool
    #: The stop the vehicle is at or drives to next, and its stop_sequence.
    nextStopId: str | None
    nextStopSequence: int | None
    #: Time of the position reading (RFC 3339) the figures are computed from.
    time: str
    ts_ns: int


@dataclass(frozen=True, slots=True)
class VehicleAdherence:
    """The internal result: the public row plus what the TripUpdates feed needs."""

    row: Adherence
    trip: TripSchedule | None
    #: Index into the trip's stops of the next (or current) stop.
    next_index: int
    #: Noon minus 12 h of the service day (s since the epoch).
    anchor_s: float
    #: Scheduled time (s since the epoch) at the vehicle's position.
    scheduled_s: float


def _project(trip: TripSchedule, px: float, py: float) -> tuple[float, int, float, float]:
    """(distance from the path, segment, fraction along it, distance along the path)."""
    x0, y0, x1, y1 = trip.x[:-1], trip.y[:-1], trip.x[1:], trip.y[1:]
    dx, dy = x1 - x0, y1 - y0
    length2 = dx * dx + dy * dy
    with np.errstate(invalid="ignore", divide="ignore"):
        f = np.where(length2 > 0, ((px - x0) * dx + (py - y0) * dy) / length2, 0.0)
    f = np.clip(f, 0.0, 1.0)
    dist = np.hypot(x0 + f * dx - px, y0 + f * dy - py)
    seg = int(np.argmin(dist))
    along = float(trip.cum[seg] + f[seg] * (trip.cum[seg + 1] - trip.cum[seg]))
    return float(dist[seg]), seg, float(f[seg]), along


def _scheduled(
    trip: TripSchedule, seg: int, frac: float
) -> tuple[float, int, Literal["in_transit", "at_stop", "at_terminus"]]:
    """(scheduled time after the anchor, next stop index, where) at a place on the path."""
    seg_len = float(trip.cum[seg + 1] - trip.cum[seg])
    start_gap = frac * seg_len
    end_gap = (1.0 - frac) * seg_len
    last = len(trip.arr) - 1
    if start_gap <= _STOP_RADIUS_M or end_gap <= _STOP_RADIUS_M:
        stop = seg if start_gap <= end_gap else seg + 1
        if stop == 0:
            return float(trip.dep[0]), 0, "at_terminus"
        if stop == last:
            return float(trip.arr[last]), last, "at_stop"
        return float(trip.arr[stop] + trip.dep[stop]) / 2, stop, "at_stop"
    t = trip.dep[seg] + frac * (trip.arr[seg + 1] - trip.dep[seg])
    return float(t), seg + 1, "in_transit"


def _row(
    v: VehicleOut, trip: TripSchedule | None, nxt: int, status: AdherenceStatus,
    start_date: str | None = None, delay: int | None = None,
) -> Adherence:
    return Adherence(
        id=v.id, gateway=v.gateway, device=v.device,
        routeId=v.routeId or (trip.route_id if trip is not None else None), tripId=v.tripId,
        startDate=start_date, directionId=trip.direction_id if trip is not None else None,
        status=status, delay_s=delay, headway_s=None, scheduledHeadway_s=None, late=False,
        bunched=False, nextStopId=trip.stop_ids[nxt] if trip is not None else None,
        nextStopSequence=trip.stop_sequence[nxt] if trip is not None else None,
        time=v.time, ts_ns=v.ts_ns,
    )


def _service_day(
    feed: GtfsFeed, trip: TripSchedule, ts_s: float, sched_after_anchor: float
) -> tuple[dt.date, float] | None:
    """The service day that makes the reading least late or early, and its anchor."""
    local = dt.datetime.fromtimestamp(ts_s, feed.tz).date()
    best: tuple[float, dt.date, float] | None = None
    for day in (local - dt.timedelta(days=1), local, local + dt.timedelta(days=1)):
        if not feed.active(trip.service_id, day):
            continue
        anchor = feed.anchor(day)
        delay = ts_s - (anchor + sched_after_anchor)
        if best is None or abs(delay) < abs(best[0]):
            best = (delay, day, anchor)
    return None if best is None else (best[1], best[2])


def adherence(
    feed: GtfsFeed, fleet: list[VehicleOut], *, late_threshold_s: float, bunched_ratio: float,
    off_route_m: float,
) -> list[VehicleAdherence]:
    """Adherence of every vehicle in ``fleet`` (the live vehicles), in their order."""
    out: list[VehicleAdherence] = []
    placed: list[_Placed] = []
    for v in fleet:
        trip = feed.trips.get(v.tripId) if v.tripId else None
        if trip is None or v.location is None:
            status: AdherenceStatus = (
                "no_trip" if not v.tripId else "unknown_trip" if trip is None else "no_position"
            )
            out.append(VehicleAdherence(_row(v, trip, 0, status), trip, 0, 0.0, 0.0))
            continue
        px, py = feed.local_xy(v.location.lat, v.location.lon)
        off, seg, frac, along = _project(trip, px, py)
        ts_s = v.ts_ns / 1e9
        sched, nxt, where = _scheduled(trip, seg, frac)
        day = _service_day(feed, trip, ts_s, sched)
        if off > off_route_m or day is None:
            status = "off_route" if off > off_route_m else "unknown_trip"
            out.append(VehicleAdherence(_row(v, trip, nxt, status), trip, nxt, 0.0, 0.0))
            continue
        service_day, anchor = day
        delay = ts_s - (anchor + sched)
        if where == "at_terminus":
            delay = max(delay, 0.0)  # waiting to leave is not early
        row = _row(v, trip, nxt, where, service_day.strftime("%Y%m%d"), round(delay))
        row.late = round(delay) > late_threshold_s
        out.append(VehicleAdherence(row, trip, nxt, anchor, anchor + sched))
        placed.append((len(out) - 1, px, py, delay, along))
    _headways(out, placed, bunched_ratio, off_route_m)
    return out


def _headways(
    out: list[VehicleAdherence], placed: list[_Placed], bunched_ratio: float,
    off_route_m: float,
) -> None:
    # Same route and direction; a feed without direction_id: same first and last stop.
    groups: dict[tuple[str | None, object], list[_Placed]] = {}
    for entry in placed:
        result = out[entry[0]]
        assert result.trip is not None
        way: object = result.row.directionId
        if way is None:
            way = (result.trip.stop_ids[0], result.trip.stop_ids[-1])
        groups.setdefault((result.row.routeId, way), []).append(entry)
    for members in groups.values():
        # The bus ahead is among the next few further along (by distance on their own trip):
        # bounded work per vehicle however many share a route.
        members.sort(key=lambda m: m[4])
        for k, (i, px, py, _delay, _along) in enumerate(members):
            me = out[i]
            ts_s = me.row.ts_ns / 1e9
            best: tuple[float, float] | None = None  # (when the leader passed, its sched)
            for j, _x, _y, other_delay, _a in members[k + 1 : k + 1 + _LEADER_CANDIDATES]:
                lead = out[j]
                assert lead.trip is not None
                off, seg, frac, _along = _project(lead.trip, px, py)
                if off > off_route_m:
                    continue
                sched_here = lead.anchor_s + _scheduled(lead.trip, seg, frac)[0]
                if sched_here >= lead.scheduled_s:
                    continue  # it has not passed here yet
                passed = sched_here + other_delay
                if best is None or passed > best[0]:
                    best = (passed, sched_here)
            if best is None:
                continue
            headway = round(ts_s - best[0])
            scheduled = round(me.scheduled_s - best[1])
            me.row.headway_s = headway
            me.row.scheduledHeadway_s = scheduled
            me.row.bunched = scheduled > 0 and headway < bunched_ratio * scheduled


class Schedule:
    """The timetable the API holds (``None`` feed: none configured) and the cached
    adherence of the live vehicles."""

    def __init__(
        self, feed: GtfsFeed | None, *, late_threshold_s: float, bunched_ratio: float,
        off_route_m: float,
    ) -> None:
        self.feed = feed
        self.late_threshold_s = late_threshold_s
        self.bunched_ratio = bunched_ratio
        self.off_route_m = off_route_m
        self._cached: tuple[float, list[VehicleAdherence]] | None = None
        self._lock = asyncio.Lock()

    def _fresh(self) -> list[VehicleAdherence] | None:
        cached = self._cached
        if cached is not None and time.monotonic() - cached[0] < _CACHE_S:
            return cached[1]
        return None

    def _compute(self, fleet: list[VehicleOut]) -> list[VehicleAdherence]:
        assert self.feed is not None
        return adherence(
            self.feed, fleet, late_threshold_s=self.late_threshold_s,
            bunched_ratio=self.bunched_ratio, off_route_m=self.off_route_m,
        )

    def adherence(self, live: LiveState) -> list[VehicleAdherence]:
        """The adherence of every live vehicle (computed at most once a second), in the
        calling thread (the metrics scrape)."""
        if self.feed is None:
            return []
        got = self._fresh()
        if got is None:
            got = self._compute(vehicles(live, None, None))
            self._cached = (time.monotonic(), got)
        return got

    async def current(self, live: LiveState) -> list[VehicleAdherence]:
        """The same for request handlers: the vehicles are read in the event loop, the
        computation (about 0.1 ms a vehicle) runs in a worker thread, one at a time."""
        if self.feed is None:
            return []
        async with self._lock:
            got = self._fresh()
            if got is None:
                fleet = vehicles(live, None, None)
                got = await asyncio.to_thread(self._compute, fleet)
                self._cached = (time.monotonic(), got)
            return got


class ScheduleCollector:
    """Prometheus collector: vehicles by adherence status, late and bunched vehicles, trips
    in the timetable, computed at scrape time (from the one-second cache). Nothing without a
    timetable."""

    def __init__(self, schedule: Schedule, live: LiveState) -> None:
        self.schedule = schedule
        self.live = live

    def collect(self) -> Iterator[Metric]:
        feed = self.schedule.feed
        if feed is None:
            return
        rows = [a.row for a in self.schedule.adherence(self.live)]
        counts = Counter(r.status for r in rows)
        by_status = GaugeMetricFamily(
            "smartcity_api_schedule_vehicles", "Live vehicles by schedule adherence status",
            labels=["status"],
        )
        for status in get_args(AdherenceStatus):
            by_status.add_metric([status], counts.get(status, 0))
        yield by_status
        yield GaugeMetricFamily("smartcity_api_schedule_late_vehicles",
                                "Vehicles later than late_threshold_s",
                                value=sum(r.late for r in rows))
        yield GaugeMetricFamily("smartcity_api_schedule_bunched_vehicles",
                                "Vehicles closer to the bus ahead than bunched_ratio allows",
                                value=sum(r.bunched for r in rows))
        yield GaugeMetricFamily("smartcity_api_gtfs_trips", "Trips in the GTFS timetable",
                                value=len(feed.trips))
