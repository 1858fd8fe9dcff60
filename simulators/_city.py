"""The city model: roads, traffic, buses, parking, air, noise, water and energy, in numpy.

Everything is computed per step for every sensor at once (arrays, no per-sensor Python)::

      scenario ──▶ Layout (static: road grid, routes, gateways, sensors, ids)
                     │
      t, dt ──▶ City.step ──▶ link state (demand → occupancy → speed → flow, all links)
                     │          ├─▶ loop detectors: per lane, Poisson counts, sensor noise
                     │          ├─▶ buses: move along routes at link speed, dwell at stops
                     │          ├─▶ air / noise: traffic of the links around the station
                     │          ├─▶ car parks: relax towards a time-of-day target by area
                     │          ├─▶ water: diurnal demand per meter (+ leaks), totalisers
                     │          └─▶ energy: load profile per meter, totalisers
                     ▼
                   Frame: per device kind, one row per reading (ts, field arrays, valid mask)

Deterministic: one ``numpy.random.Generator`` seeded by the scenario draws in a fixed order,
so the same scenario, seed and step times give the same frames, bit for bit.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Final
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

# KIND_SPECS, FieldSpec, KindSpec, the layout and the profiles live in their own modules
# (_kinds, _layout, _profiles); they are named here too, where their users import them.
from simulators._kinds import KIND_SPECS, FieldSpec, KindSpec
from simulators._layout import F64, I64, Bool, KindLayout, Layout, RoadNetwork, build_layout
from simulators._profiles import energy_profile, parking_target, traffic_profile, water_profile
from simulators._scenario import DeviceKind, Scenario
from simulators._timetable import BusState, Timetable

__all__ = [
    "KIND_SPECS",
    "City",
    "FieldSpec",
    "Frame",
    "KindFrame",
    "KindLayout",
    "KindSpec",
    "Layout",
    "RoadNetwork",
    "build_layout",
    "parking_target",
    "traffic_profile",
    "water_profile",
]

_L_EFF_KM: Final = 0.0065  # effective vehicle length + detector length, km
_OCC_JAM: Final = 0.95


def _ar1(prev: F64, dt_s: float, tau_s: float, rng: np.random.Generator, n: int) -> F64:
    """One step of unit-variance AR(1) noise with correlation time ``tau_s`` (a sensor's
    slowly wandering error); draws ``n`` normals from ``rng``."""
    phi = math.exp(-max(dt_s, 1.0) / tau_s)
    out: F64 = phi * prev + math.sqrt(1 - phi * phi) * rng.standard_normal(n)
    return out


@dataclass(slots=True)
class KindFrame:
    """The readings of one kind at one step: one row per reading."""

    layout: KindLayout
    ts: I64
    values: dict[str, npt.NDArray[np.float64] | npt.NDArray[np.int64]]
    strings: dict[str, list[str]]
    valid: Bool

    @property
    def kind(self) -> DeviceKind:
        return self.layout.kind

    def count(self) -> int:
        return int(self.valid.sum())


@dataclass(slots=True)
class Frame:
    """Everything the city's sensors observed at simulated time ``t_ns``."""

    t_ns: int
    hour: float
    kinds: dict[DeviceKind, KindFrame]

    def readings(self) -> int:
        return sum(k.count() for k in self.kinds.values())


class City:
    """The living city. ``step(t_ns)`` advances the state to ``t_ns`` and returns a :class:`Frame`.

    Steps must move forward in time; ``t_ns`` of the first step is the start of the clock.
    """

    def __init__(self, scenario: Scenario, layout: Layout | None = None) -> None:
        self.scenario = scenario
        self.layout = layout or build_layout(scenario)
        self._tz = ZoneInfo(scenario.city.timezone)
        self._rng = np.random.default_rng([scenario.seed, 0xC17])
        roads = self.layout.roads
        self._link_noise = np.zeros(roads.links)
        self._last_t: int | None = None
        k = self.layout.kinds
        #: The buses' timetable and recorded delays (``None`` without buses).
        self.timetable: Timetable | None = (
            Timetable(self.layout, demand=lambda h, w: float(traffic_profile(h, w)))
            if "bus" in k
            else None
        )
        #: Per bus, its trip, recorded delay and place at the last step (the ground truth).
        self.bus_states: list[BusState] = []
        self._park_occ: F64 | None = None
        self._air_noise = np.zeros(k["air"].sensors if "air" in k else 0)
        self._water_total = (
            np.asarray(k["water"].attrs["total0"], dtype=np.float64).copy()
            if "water" in k
            else np.zeros(0)
        )
        self._energy_total = (
            np.asarray(k["energy"].attrs["total0"], dtype=np.float64).copy()
            if "energy" in k
            else np.zeros(0)
        )
        self._water_noise = np.zeros(len(self._water_total))
        self._energy_noise = np.zeros(len(self._energy_total))
        #: Extra flow per water meter (m3/h), set by leak faults before each step.
        self.leak_m3h = np.zeros(len(self._water_total))
        # Link state of the last step (for the API and buses).
        self.link_occupancy = np.zeros(roads.links)
        self.link_speed = roads.link_free_speed.copy()
        self.link_flow = np.zeros(roads.links)  # veh/h per lane
        self.bus_state: dict[str, F64] = {}

    def local_hour(self, t_ns: int) -> tuple[float, bool]:
        when = dt.datetime.fromtimestamp(t_ns / 1e9, self._tz)
        return when.hour + when.minute / 60 + when.second / 3600, when.weekday() >= 5

    def step(self, t_ns: int, due: frozenset[DeviceKind] | None = None) -> Frame:
        """Advance to ``t_ns`` and observe the kinds in ``due`` (all when None)."""
        dt_s = 0.0 if self._last_t is None else (t_ns - self._last_t) / 1e9
        if dt_s < 0:
            raise ValueError("City.step must move forward in time")
        first = self._last_t is None
        self._last_t = t_ns
        hour, weekend = self.local_hour(t_ns)
        rng = self._rng
        roads = self.layout.roads
        # -- links: demand → occupancy → speed → flow (Greenshields-like, per lane) --------
        self._link_noise = _ar1(self._link_noise, dt_s, 900.0, rng, roads.links)
        demand = float(traffic_profile(hour, weekend))
        x = np.clip(roads.link_weight * demand * (1.0 + 0.08 * self._link_noise), 0.0, 1.5)
        occ = np.clip(0.62 * x**1.6 + 0.01, 0.003, 0.92)
        speed = np.maximum(roads.link_free_speed * (1.0 - occ / _OCC_JAM) ** 1.1, 3.0)
        flow = occ / _L_EFF_KM * speed
        self.link_occupancy, self.link_speed, self.link_flow = occ, speed, flow
        kinds = self.layout.kinds
        frames: dict[DeviceKind, KindFrame] = {}
        ts_all = {kind: np.full(k.rows, t_ns, dtype=np.int64) for kind, k in kinds.items()}

        def want(kind: DeviceKind) -> bool:
            return kind in kinds and (due is None or kind in due)

        # The state of every kind advances each step (rng draws in a fixed order), whether or
        # not it reports, so that what a sensor says never depends on when it was asked.
        if "loop" in kinds:
            lk = kinds["loop"]
            link = np.asarray(lk.attrs["link"], dtype=np.int64)[lk.row_sensor]
            lane = np.asarray(lk.attrs["row_lane"], dtype=np.int64)
            # Detectors report a rolling count over at least a minute, scaled to veh/h.
            period_h = max(self.scenario.interval_s("loop"), 60.0) / 3600.0
            lane_f = 0.85 + 0.1 * lane
            r_occ = np.clip(
                occ[link] * lane_f * (1.0 + 0.05 * rng.standard_normal(lk.rows)), 0.001, 0.95
            )
            r_speed = np.clip(
                roads.link_free_speed[link] * (1.0 - r_occ / _OCC_JAM) ** 1.1
                + 1.5 * rng.standard_normal(lk.rows),
                3.0,
                130.0,
            )
            count = rng.poisson(r_occ / _L_EFF_KM * r_speed * period_h)
            intensity = count / period_h
            headway = np.where(count > 0, 3600.0 / np.maximum(intensity, 1e-9), period_h * 3600.0)
            if want("loop"):
                frames["loop"] = KindFrame(
                    lk,
                    ts_all["loop"],
                    {
                        "intensity": intensity.astype(np.float64),
                        "averageVehicleSpeed": r_speed,
                        "occupancy": r_occ,
                        "averageHeadwayTime": np.minimum(headway, period_h * 3600.0),
                        "vehicleCount": count.astype(np.int64),
                    },
                    {},
                    np.ones(lk.rows, dtype=np.bool_),
                )
        if "bus" in kinds:
            frames_bus = self._buses(kinds["bus"], dt_s, hour, demand, speed, ts_all["bus"])
            if want("bus"):
                frames["bus"] = frames_bus
        if "parking" in kinds:
            pk = kinds["parking"]
            target = parking_target(hour, np.asarray(pk.attrs["centrality"], dtype=np.float64))
            if self._park_occ is None or first:
                self._park_occ = target.copy()
            relax = 1.0 - math.exp(-dt_s / 1200.0)
            self._park_occ = np.clip(
                self._park_occ
                + (target - self._park_occ) * relax
                + 0.004 * math.sqrt(max(dt_s, 1.0) / 60) * rng.standard_normal(pk.sensors),
                0.0,
                1.0,
            )
            cap = np.asarray(pk.attrs["capacity"], dtype=np.int64)
            taken = np.minimum(np.rint(self._park_occ * cap).astype(np.int64), cap)
            if want("parking"):
                frames["parking"] = KindFrame(
                    pk,
                    ts_all["parking"],
                    {
                        "availableSpotNumber": cap - taken,
                        "totalSpotNumber": cap.copy(),
                        "occupancy": taken / cap,
                    },
                    {},
                    np.ones(pk.sensors, dtype=np.bool_),
                )
        temp = 7.0 + 6.0 * math.sin(2 * math.pi * (hour - 9.0) / 24.0)
        if "air" in kinds or "noise" in kinds:
            lane_flow = flow * roads.link_lanes  # veh/h on the whole link
        if "air" in kinds:
            ak = kinds["air"]
            traffic = lane_flow[np.asarray(ak.attrs["links"], dtype=np.int64)].mean(axis=1)
            self._air_noise = _ar1(self._air_noise, dt_s, 3600.0, rng, ak.sensors)
            eps = rng.standard_normal((3, ak.sensors))
            no2 = np.maximum(8.0 + 0.022 * traffic + 3.0 * self._air_noise + 1.5 * eps[0], 0.5)
            pm25 = np.maximum(4.0 + 0.0045 * traffic + 2.0 * self._air_noise + 0.8 * eps[1], 0.3)
            sun = max(0.0, math.sin(math.pi * (hour - 6.0) / 14.0)) if 6 <= hour <= 20 else 0.0
            o3 = np.maximum(35.0 + 30.0 * sun - 0.25 * no2 + 2.0 * eps[2], 1.0)
            if want("air"):
                frames["air"] = KindFrame(
                    ak,
                    ts_all["air"],
                    {
                        "pm25": pm25,
                        "pm10": pm25 * 1.6 + 2.0,
                        "no2": no2,
                        "o3": o3,
                        "co": 0.15 + 0.00012 * traffic,
                        "temperature": temp + 0.5 * self._air_noise,
                        "relativeHumidity": np.clip(
                            0.75
                            - 0.15 * math.sin(2 * math.pi * (hour - 9.0) / 24.0)
                            + 0.03 * self._air_noise,
                            0.05,
                            1.0,
                        ),
                    },
                    {},
                    np.ones(ak.sensors, dtype=np.bool_),
                )
        if "noise" in kinds:
            nk = kinds["noise"]
            traffic_n = lane_flow[np.asarray(nk.attrs["links"], dtype=np.int64)].mean(axis=1)
            eps = rng.standard_normal((2, nk.sensors))
            laeq = 38.0 + 10.0 * np.log10(1.0 + traffic_n / 20.0) + 1.2 * eps[0]
            if want("noise"):
                frames["noise"] = KindFrame(
                    nk,
                    ts_all["noise"],
                    {
                        "LAeq": laeq,
                        "LAmax": laeq + 9.0 + 3.0 * np.abs(eps[1]),
                        "LA90": laeq - 7.0 - np.abs(eps[1]),
                    },
                    {},
                    np.ones(nk.sensors, dtype=np.bool_),
                )
        if "water" in kinds:
            wk = kinds["water"]
            self._water_noise = _ar1(self._water_noise, dt_s, 1800.0, rng, wk.sensors)
            base = np.asarray(wk.attrs["base_m3h"], dtype=np.float64)
            wflow = (
                np.maximum(
                    base * float(water_profile(hour)) * (1.0 + 0.06 * self._water_noise), 0.0
                )
                + self.leak_m3h
            )
            self._water_total = self._water_total + wflow * dt_s / 3600.0
            pressure = 4.6 - 1.1 * wflow / (base * 1.3) + 0.03 * rng.standard_normal(wk.sensors)
            if want("water"):
                frames["water"] = KindFrame(
                    wk,
                    ts_all["water"],
                    {
                        "flow": wflow,
                        "pressure": np.maximum(pressure, 0.5),
                        "consumption": self._water_total.copy(),
                    },
                    {},
                    np.ones(wk.sensors, dtype=np.bool_),
                )
        if "energy" in kinds:
            ek = kinds["energy"]
            self._energy_noise = _ar1(self._energy_noise, dt_s, 600.0, rng, ek.sensors)
            eps = rng.standard_normal((2, ek.sensors))
            base_w = np.asarray(ek.attrs["base_w"], dtype=np.float64)
            load = energy_profile(hour, np.asarray(ek.attrs["commercial"], dtype=np.bool_))
            p = np.maximum(base_w * load * (1.0 + 0.05 * self._energy_noise), 100.0)
            pf = np.clip(0.95 + 0.02 * eps[0], 0.8, 0.999)
            volt = 231.0 - 4.0 * load + 0.6 * eps[1]
            self._energy_total = self._energy_total + p * dt_s / 3.6e6
            if want("energy"):
                frames["energy"] = KindFrame(
                    ek,
                    ts_all["energy"],
                    {
                        "activePower": p,
                        "reactivePower": p * np.tan(np.arccos(pf)),
                        "totalActiveEnergyImport": self._energy_total.copy(),
                        "voltage": volt,
                        "current": p / (volt * pf),
                        "frequency": 50.0 + 0.015 * self._energy_noise,
                        "powerFactor": pf,
                    },
                    {},
                    np.ones(ek.sensors, dtype=np.bool_),
                )
        return Frame(t_ns=t_ns, hour=hour, kinds=frames)

    def _buses(
        self, bk: KindLayout, dt_s: float, hour: float, demand: float, link_speed: F64, ts: I64
    ) -> KindFrame:
        """Buses run their timetable (``simulators._timetable``) late by each trip's recorded
        delay: position, heading and speed follow from the timetable; they report 0 km/h
        while dwelling at a stop or waiting at a terminus."""
        rng = self._rng
        routes = self.layout.routes
        route = np.asarray(bk.attrs["route"], dtype=np.int64)
        assert self.timetable is not None
        assert self._last_t is not None
        t_s = self._last_t / 1e9
        states = [self.timetable.state(b, t_s) for b in range(bk.sensors)]
        self.bus_states = states
        d = np.array([st.route_dist_m for st in states], dtype=np.float64)
        forward = np.array([st.trip.direction == 0 for st in states], dtype=np.bool_)
        first = routes.route_first_seg[route]
        last = first + routes.route_nseg[route] - 1
        # Segment lookup: segments of one route are contiguous with increasing starts.
        key = route * 1e9 + d
        seg_keys = routes.seg_route * 1e9 + routes.seg_start
        seg = np.clip(np.searchsorted(seg_keys, key, side="right") - 1, first, last)
        frac = np.clip((d - routes.seg_start[seg]) / routes.seg_len[seg], 0.0, 1.0)
        lat = routes.seg_lat0[seg] + frac * (routes.seg_lat1[seg] - routes.seg_lat0[seg])
        lon = routes.seg_lon0[seg] + frac * (routes.seg_lon1[seg] - routes.seg_lon0[seg])
        heading = np.where(
            forward, routes.seg_heading[seg], (routes.seg_heading[seg] + 180.0) % 360.0
        )
        # The draws of the former free-running model stay, in order, so that every other
        # kind's values are unchanged.
        rng.random(bk.sensors)
        noise = 1.0 + 0.05 * rng.standard_normal(bk.sensors)
        scheduled = np.array([st.speed_kmh for st in states], dtype=np.float64)
        speed = np.where(scheduled > 0, np.maximum(scheduled * noise, 2.0), 0.0)
        cap = np.asarray(bk.attrs["capacity"], dtype=np.int64)
        load = np.clip(
            0.1
            + 0.8 * demand * (0.5 + 0.5 * np.asarray(bk.attrs["centrality"]))
            + 0.08 * rng.standard_normal(bk.sensors),
            0.0,
            1.1,
        )
        passengers = np.rint(load * cap).astype(np.int64)
        self.bus_state = {"latitude": lat, "longitude": lon, "speed": speed, "heading": heading}
        names = routes.names
        route_l = route.tolist()
        return KindFrame(
            bk,
            ts,
            {
                "latitude": lat,
                "longitude": lon,
                "speed": speed,
                "heading": heading,
                "passengerCount": passengers,
            },
            {
                "routeId": [names[r] for r in route_l],
                "tripId": [st.trip.trip_id for st in states],
            },
            np.ones(bk.sensors, dtype=np.bool_),
        )
