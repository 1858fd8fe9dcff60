"""The simulated city's bus timetable, the delays its buses run with, and its GTFS feed.

The timetable is what an on-time bus does; the simulator then makes each trip late by a
known, recorded amount (the ground truth the API's schedule adherence is checked against)::

    Layout.routes ──▶ Timetable (static, from the scenario alone)
      per route   stops = the intersections it runs through; run time per segment at
                  ``speed_kmh``; ``dwell_s`` at each intermediate stop; a cycle C (there and
                  back, with at least ``min_layover_s`` at each end) rounded up to divide 24 h
      per bus     one block of the route: trips every H = C/2 in alternating directions
                  (0: along the route, 1: back), blocks spread C/n apart on a route of n buses
                          │
    bus, t ──▶ Timetable.state(bus, t) ──▶ BusState: trip, service day, recorded delay,
                                            where along the route, moving/dwelling/layover
                          │
    write_gtfs(...) ──▶ GTFS zip: agency, stops, routes, trips, stop_times, calendar, feed_info

Times follow GTFS: a service day's times count from noon minus 12 h (local time of the
city's zone) and run past 24:00:00 for trips that end after midnight. Every day has the
same trips (one ``daily`` service).

Delays (the ground truth): each trip ``i`` of a bus on a service day draws a raw delay from
its own generator (seed, bus, day): usually 0-2 minutes (longer at peak demand), a share
``disrupted_share`` of trips 4-12 minutes. A bus cannot leave before it has arrived, so
``delay[i] = max(raw[i], delay[i-1] - layover)``: a late bus catches up at most one layover
per trip. The delay holds for the whole trip (every stop of it), so a bus is exactly
``delay`` seconds behind its timetable from its departure to its arrival; between trips it
waits at the terminus and reports the next trip. ``Timetable.delay_s`` is a pure function of
(bus, day, trip): it is the record.

Limitation: on the two nights a year the clocks change, the service day is 23 or 25 hours
long and the day's last hour of trips overlaps (or misses) the next day's first.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Final, Literal
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from simulators._scenario import TimetableSpec
from telemetry import format_gtfs_time, service_day_anchor

if TYPE_CHECKING:
    from simulators._layout import Layout

__all__ = ["GTFS_FILES", "BusState", "Timetable", "TripRef", "write_delays", "write_gtfs"]

F64 = npt.NDArray[np.float64]

_DAY_S: Final = 86_400
_CACHE_DAYS: Final = 4
#: The files :func:`write_gtfs` writes (GTFS Schedule reference names).
GTFS_FILES: Final = (
    "agency.txt", "stops.txt", "routes.txt", "trips.txt", "stop_times.txt", "calendar.txt",
    "feed_info.txt",
)

Phase = Literal["layover", "dwell", "moving"]


@dataclass(frozen=True, slots=True)
class TripRef:
    """One scheduled trip: ``index`` of the bus's trips on service day ``day``."""

    bus: int
    day: dt.date
    index: int
    trip_id: str
    route: int
    direction: int
    #: Scheduled departure from the first stop, seconds since the epoch.
    start_s: float


@dataclass(frozen=True, slots=True)
class BusState:
    """Where a bus is at one instant, and the ground truth about its lateness."""

    trip: TripRef
    #: The trip's recorded delay (s): the bus is this far behind its timetable.
    delay_s: int
    phase: Phase
    #: Distance along the route's polyline in its forward direction (m).
    route_dist_m: float
    speed_kmh: float
    #: Index (trip order) of the stop the bus is at or drives to next.
    next_stop: int


@dataclass(frozen=True, slots=True)
class _RouteSchedule:
    name: str
    nodes: tuple[int, ...]
    #: Forward distance of each stop along the route (m).
    stop_dist: F64
    #: Per stop, in trip order (the same both ways: segments are symmetric), seconds after
    #: the trip's start.
    arr: F64
    dep: F64
    run_s: float  # first departure to last arrival
    cycle_s: int
    half_s: int  # H = C/2: one trip plus one layover
    buses: tuple[int, ...]  # bus indices on this route, by block


class Timetable:
    """The timetable of every bus in ``layout`` and the delays they run with.

    ``demand(local_hour, weekend)`` is the road demand profile (0-1.3) that makes trips at
    peak hours later; ``None``: flat.
    """

    def __init__(
        self,
        layout: Layout,
        demand: Callable[[float, bool], float] | None = None,
    ) -> None:
        scenario = layout.scenario
        self.spec: TimetableSpec = scenario.city.timetable
        self.seed = scenario.seed
        self.tz = ZoneInfo(scenario.city.timezone)
        self.layout = layout
        self._demand = demand
        routes = layout.routes
        bus = layout.kinds.get("bus")
        n_bus = bus.sensors if bus is not None else 0
        self.bus_ids: list[str] = list(bus.device_ids) if bus is not None else []
        bus_route = (
            np.asarray(bus.attrs["route"], dtype=np.int64).tolist() if bus is not None else []
        )
        self.bus_route: list[int] = [int(r) for r in bus_route]
        speed = self.spec.speed_kmh / 3.6
        self.routes: list[_RouteSchedule] = []
        for ri, name in enumerate(routes.names):
            first, nseg = int(routes.route_first_seg[ri]), int(routes.route_nseg[ri])
            seg_len = routes.seg_len[first : first + nseg]
            runs = np.maximum(np.rint(seg_len / speed), 1.0)
            arr = np.zeros(nseg + 1)
            dep = np.zeros(nseg + 1)
            for m in range(nseg):
                arr[m + 1] = dep[m] + runs[m]
                dep[m + 1] = arr[m + 1] + (self.spec.dwell_s if m + 1 < nseg else 0)
            run_s = float(arr[-1])
            cycle = _cycle(2 * (run_s + self.spec.min_layover_s))
            on_route = tuple(b for b in range(n_bus) if self.bus_route[b] == ri)
            stop_dist = np.concatenate(([0.0], np.cumsum(seg_len)))
            nodes = routes.route_nodes[ri] if routes.route_nodes else ()
            self.routes.append(
                _RouteSchedule(name, nodes, stop_dist, arr, dep, run_s, cycle, cycle // 2,
                               on_route)
            )
        self._block: list[int] = [0] * n_bus
        self._phase: list[int] = [0] * n_bus
        for rs in self.routes:
            for k, b in enumerate(rs.buses):
                self._block[b] = k
                self._phase[b] = (k * rs.cycle_s) // max(len(rs.buses), 1)
        self._raw: dict[tuple[int, dt.date], npt.NDArray[np.int64]] = {}
        self._delays: dict[tuple[int, dt.date], npt.NDArray[np.int64]] = {}

    # -- the static timetable ---------------------------------------------------------------
    def trips_per_day(self, bus: int) -> int:
        return _DAY_S // self.routes[self.bus_route[bus]].half_s

    def layover_s(self, route: int) -> float:
        rs = self.routes[route]
        return rs.half_s - rs.run_s

    def headway_s(self, route: int) -> float:
        """Scheduled headway between consecutive buses of ``route`` in one direction."""
        rs = self.routes[route]
        return rs.cycle_s / max(len(rs.buses), 1)

    def anchor(self, day: dt.date) -> float:
        """Noon minus 12 h of ``day`` in the city's zone, seconds since the epoch (GTFS)."""
        return service_day_anchor(day, self.tz)

    def _offset(self, bus: int, index: int) -> tuple[int, int]:
        """(seconds after the anchor, direction) of trip ``index`` of ``bus``'s day."""
        rs = self.routes[self.bus_route[bus]]
        phase = self._phase[bus]
        start = phase % rs.half_s + index * rs.half_s
        return start, (index + phase // rs.half_s) % 2

    def trip(self, bus: int, day: dt.date, index: int) -> TripRef:
        route = self.bus_route[bus]
        start, direction = self._offset(bus, index)
        return TripRef(
            bus=bus, day=day, index=index,
            trip_id=f"{self.routes[route].name}-{self._block[bus]:02d}-{index:03d}",
            route=route, direction=direction, start_s=self.anchor(day) + start,
        )

    # -- the ground truth ---------------------------------------------------------------------
    def _raw_delays(self, bus: int, day: dt.date) -> npt.NDArray[np.int64]:
        key = (bus, day)
        got = self._raw.get(key)
        if got is not None:
            return got
        spec = self.spec
        n = self.trips_per_day(bus)
        rng = np.random.default_rng([self.seed, 0x7E1A, bus, day.toordinal()])
        u, e, big = rng.random(n), rng.exponential(1.0, n), rng.uniform(240.0, 720.0, n)
        weekend = day.weekday() >= 5
        demand = np.empty(n)
        for i in range(n):
            hour = (self._offset(bus, i)[0] / 3600.0) % 24.0
            demand[i] = 0.5 if self._demand is None else self._demand(hour, weekend)
        raw = e * (10.0 + 40.0 * np.clip(demand, 0.0, 1.2))
        raw = np.where(u < spec.disrupted_share * np.clip(0.5 + demand, 0.5, 1.5), big, raw)
        out = np.clip(np.rint(raw), 0, spec.max_delay_s).astype(np.int64)
        if len(self._raw) > _CACHE_DAYS * max(len(self.bus_ids), 1):
            self._raw.clear()
        self._raw[key] = out
        return out

    def delays(self, bus: int, day: dt.date) -> npt.NDArray[np.int64]:
        """The recorded delay (s) of every trip of ``bus`` on service day ``day``."""
        key = (bus, day)
        got = self._delays.get(key)
        if got is not None:
            return got
        layover = self.layover_s(self.bus_route[bus])
        raw = self._raw_delays(bus, day)
        lookback = math.ceil(self.spec.max_delay_s / max(layover, 1.0)) + 1
        before = self._raw_delays(bus, day - dt.timedelta(days=1))[-lookback:]
        seq = np.concatenate((before, raw)).astype(np.float64)
        out = seq.copy()
        for m in range(1, lookback + 1):  # delay[i] = max over m of raw[i-m] - m * layover
            out[m:] = np.maximum(out[m:], seq[:-m] - m * layover)
        result = np.clip(out[len(before):], 0, self.spec.max_delay_s).astype(np.int64)
        if len(self._delays) > _CACHE_DAYS * max(len(self.bus_ids), 1):
            self._delays.clear()
        self._delays[key] = result
        return result

    def delay_s(self, bus: int, day: dt.date, index: int) -> int:
        return int(self.delays(bus, day)[index])

    def state(self, bus: int, t_s: float) -> BusState:
        """Where ``bus`` is at ``t_s`` (seconds since the epoch) and which trip it serves."""
        route = self.bus_route[bus]
        rs = self.routes[route]
        n = self.trips_per_day(bus)
        local_day = dt.datetime.fromtimestamp(t_s, self.tz).date()
        horizon = rs.run_s + self.spec.max_delay_s
        for day in (local_day - dt.timedelta(days=1), local_day, local_day + dt.timedelta(days=1)):
            base = self.anchor(day) + self._phase[bus] % rs.half_s
            lo = max(0, math.floor((t_s - horizon - base) / rs.half_s))
            delays = self.delays(bus, day)
            for i in range(lo, n):
                start = base + i * rs.half_s
                delay = int(delays[i])
                if start + delay + rs.run_s > t_s:
                    return self._where(self.trip(bus, day, i), delay, t_s - start - delay)
        raise AssertionError("no trip found")  # unreachable: service runs all day, every day

    def _where(self, trip: TripRef, delay: int, tau: float) -> BusState:
        rs = self.routes[trip.route]
        last = len(rs.arr) - 1
        if tau < 0:
            phase: Phase = "layover"
            stop, dist, speed = 0, 0.0, 0.0
        else:
            stop = int(np.searchsorted(rs.arr, tau, side="right"))  # first stop not reached
            at = stop - 1  # the last stop reached
            if tau < rs.dep[at]:
                phase, dist, speed = "dwell", float(rs.stop_dist[at]), 0.0
                stop = at
            else:
                seg = min(at, last - 1)
                run = rs.arr[seg + 1] - rs.dep[seg]
                frac = min(max((tau - rs.dep[seg]) / run, 0.0), 1.0)
                length = rs.stop_dist[seg + 1] - rs.stop_dist[seg]
                dist = float(rs.stop_dist[seg] + frac * length)
                phase, speed, stop = "moving", float(length / run * 3.6), seg + 1
        total = float(rs.stop_dist[-1])
        route_dist = dist if trip.direction == 0 else total - dist
        return BusState(trip, delay, phase, route_dist, speed, stop)

    # -- GTFS ---------------------------------------------------------------------------------
    def stop_id(self, node: int) -> str:
        return f"S{node:04d}"

    def stop_name(self, node: int) -> str:
        cols = self.layout.scenario.city.grid.cols
        i, j = divmod(node, cols)
        return f"Street {i + 1} / Avenue {j + 1}"

    def trip_stops(self, route: int, direction: int) -> list[int]:
        nodes = list(self.routes[route].nodes)
        return nodes if direction == 0 else nodes[::-1]


def _cycle(least_s: float) -> int:
    """The shortest cycle (s) of at least ``least_s`` that divides 24 h in whole even minutes
    (so each day repeats the last, and a trip there plus its layover is whole minutes)."""
    minutes = math.ceil(least_s / 60.0)
    for m in range(max(minutes, 2), 1441):
        if 1440 % m == 0 and m % 2 == 0:
            return m * 60
    return 1440 * 60


def write_gtfs(
    timetable: Timetable,
    target: Path | BinaryIO,
    *,
    start: dt.date,
    end: dt.date,
    agency_name: str = "Simulated City Transit",
    agency_url: str = "https://example.invalid/transit",
) -> dict[str, int]:
    """Write the timetable as a GTFS Schedule zip (the standard CSV files) valid from ``start``
    to ``end``; return the number of rows of each file."""
    if end < start:
        raise ValueError("the feed's end date is before its start date")
    layout = timetable.layout
    roads = layout.roads
    tables: dict[str, list[list[str]]] = {}
    tables["agency.txt"] = [
        ["agency_id", "agency_name", "agency_url", "agency_timezone"],
        ["city", agency_name, agency_url, layout.scenario.city.timezone],
    ]
    stops = [["stop_id", "stop_name", "stop_lat", "stop_lon"]]
    seen: set[int] = set()
    for rs in timetable.routes:
        for node in rs.nodes:
            if node not in seen:
                seen.add(node)
                stops.append([timetable.stop_id(node), timetable.stop_name(node),
                              f"{roads.node_lat[node]:.6f}", f"{roads.node_lon[node]:.6f}"])
    tables["stops.txt"] = stops
    routes = [["route_id", "agency_id", "route_short_name", "route_long_name", "route_type"]]
    for rs in timetable.routes:
        a, b = timetable.stop_name(rs.nodes[0]), timetable.stop_name(rs.nodes[-1])
        routes.append([rs.name, "city", rs.name, f"{a} - {b}", "3"])
    tables["routes.txt"] = routes
    trips = [["route_id", "service_id", "trip_id", "direction_id", "block_id",
              "trip_headsign"]]
    times = [["trip_id", "arrival_time", "departure_time", "stop_id", "stop_sequence",
              "shape_dist_traveled"]]
    day = start  # every day has the same trips; only the times relative to the anchor count
    anchor = timetable.anchor(day)
    for bus, device in enumerate(timetable.bus_ids):
        for i in range(timetable.trips_per_day(bus)):
            trip = timetable.trip(bus, day, i)
            rs = timetable.routes[trip.route]
            nodes = timetable.trip_stops(trip.route, trip.direction)
            trips.append([rs.name, "daily", trip.trip_id, str(trip.direction), device,
                          timetable.stop_name(nodes[-1])])
            t0 = trip.start_s - anchor
            for seq, node in enumerate(nodes):
                dist = rs.stop_dist[seq] if trip.direction == 0 else \
                    rs.stop_dist[-1] - rs.stop_dist[len(nodes) - 1 - seq]
                times.append([trip.trip_id, format_gtfs_time(t0 + rs.arr[seq]),
                              format_gtfs_time(t0 + rs.dep[seq]),
                              timetable.stop_id(node), str(seq + 1), f"{dist:.1f}"])
    tables["trips.txt"] = trips
    tables["stop_times.txt"] = times
    tables["calendar.txt"] = [
        ["service_id", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday",
         "sunday", "start_date", "end_date"],
        ["daily", "1", "1", "1", "1", "1", "1", "1", start.strftime("%Y%m%d"),
         end.strftime("%Y%m%d")],
    ]
    tables["feed_info.txt"] = [
        ["feed_publisher_name", "feed_publisher_url", "feed_lang", "feed_start_date",
         "feed_end_date", "feed_version"],
        [agency_name, agency_url, "en", start.strftime("%Y%m%d"), end.strftime("%Y%m%d"),
         f"{layout.scenario.name}-{layout.scenario.seed}"],
    ]
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in GTFS_FILES:
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerows(tables[name])
            zf.writestr(name, buf.getvalue())
    return {name: len(rows) - 1 for name, rows in tables.items()}


def write_delays(timetable: Timetable, target: Path, *, start: dt.date, days: int) -> int:
    """Write the recorded delay of every trip of ``days`` service days from ``start`` as CSV
    (``start_date,trip_id,block_id,route_id,direction_id,delay_s``): the ground truth, for
    checking a consumer of the feeds outside Python. Return the rows written."""
    rows = 0
    with target.open("w", newline="") as fh:
        out = csv.writer(fh, lineterminator="\n")
        out.writerow(["start_date", "trip_id", "block_id", "route_id", "direction_id",
                      "delay_s"])
        for k in range(days):
            day = start + dt.timedelta(days=k)
            for bus, device in enumerate(timetable.bus_ids):
                delays = timetable.delays(bus, day)
                for i in range(timetable.trips_per_day(bus)):
                    trip = timetable.trip(bus, day, i)
                    out.writerow([day.strftime("%Y%m%d"), trip.trip_id, device,
                                  timetable.routes[trip.route].name, trip.direction,
                                  int(delays[i])])
                    rows += 1
    return rows
