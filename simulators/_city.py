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
import itertools
import math
from dataclasses import dataclass, field
from typing import Final
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from simulators._scenario import DEVICE_KINDS, DeviceKind, Scenario
from simulators._timetable import BusState, Timetable
from telemetry import MEASUREMENTS
from telemetry import FieldSpec as VocabField

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
    "parking_target",
    "traffic_profile",
    "water_profile",
]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]

_M_PER_DEG: Final = 111_320.0
_L_EFF_KM: Final = 0.0065  # effective vehicle length + detector length, km
_OCC_JAM: Final = 0.95


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """A field the simulator emits: its entry in the platform vocabulary
    (:data:`telemetry.MEASUREMENTS`: name, type, unit) plus how the simulator rounds it."""

    name: str
    vocab: VocabField
    decimals: int = 0

    @property
    def type(self) -> str:
        """``float``, ``int``, ``bool`` or ``string`` (the vocabulary's field types)."""
        return self.vocab.type

    @property
    def unit(self) -> str:
        """The vocabulary's unit; ``-`` for fields without one (strings)."""
        return self.vocab.unit or "-"


@dataclass(frozen=True, slots=True)
class KindSpec:
    measurement: str
    fields: tuple[FieldSpec, ...]
    primary: str
    device_kind: str  # DeviceInfo.kind in births

    def numeric(self) -> tuple[FieldSpec, ...]:
        return tuple(f for f in self.fields if f.type != "string")


def _kind(measurement: str, decimals: dict[str, int], primary: str, device_kind: str) -> KindSpec:
    """A device kind emitting every field of ``measurement`` in vocabulary order; ``decimals``
    names the rounding of each float field (ints and strings are not rounded)."""
    vocab = MEASUREMENTS[measurement].fields
    unknown = set(decimals) - set(vocab)
    missing = {n for n, f in vocab.items() if f.type == "float"} - set(decimals)
    if unknown or missing or primary not in vocab:
        raise ValueError(
            f"{measurement}: decimals for fields not in the vocabulary {sorted(unknown)}, "
            f"float fields without decimals {sorted(missing)}, primary {primary!r}"
        )
    fields = tuple(FieldSpec(n, f, decimals.get(n, 0)) for n, f in vocab.items())
    return KindSpec(measurement, fields, primary, device_kind)


#: Per device kind: the measurement it emits (names, types and units from the vocabulary)
#: and the decimals the simulator rounds each float field to.
KIND_SPECS: Final[dict[DeviceKind, KindSpec]] = {
    "loop": _kind(
        "TrafficFlowObserved",
        {"intensity": 1, "averageVehicleSpeed": 1, "occupancy": 4, "averageHeadwayTime": 2},
        "intensity",
        "loop-detector",
    ),
    "bus": _kind(
        "Vehicle",
        {"latitude": 6, "longitude": 6, "speed": 1, "heading": 1},
        "speed",
        "bus-gps",
    ),
    "parking": _kind("OffStreetParking", {"occupancy": 4}, "occupancy", "car-park"),
    "air": _kind(
        "AirQualityObserved",
        {"pm25": 2, "pm10": 2, "no2": 2, "o3": 2, "co": 3, "temperature": 2,
         "relativeHumidity": 3},
        "pm25",
        "air-quality",
    ),
    "noise": _kind(
        "NoiseLevelObserved", {"LAeq": 1, "LAmax": 1, "LA90": 1}, "LAeq", "sound-level-meter"
    ),
    "water": _kind(
        "WaterConsumptionObserved",
        {"flow": 3, "pressure": 3, "consumption": 3},
        "flow",
        "water-meter",
    ),
    "energy": _kind(
        "ThreePhaseAcMeasurement",
        {"activePower": 1, "reactivePower": 1, "totalActiveEnergyImport": 3, "voltage": 2,
         "current": 3, "frequency": 3, "powerFactor": 3},
        "activePower",
        "energy-meter",
    ),
}


# -- profiles (pure functions of the local hour, vectorised over anything) -----------------


def _bump(h: F64 | float, centre: float, width: float) -> F64:
    return np.exp(-(((np.asarray(h, dtype=np.float64) - centre) / width) ** 2))


def traffic_profile(hour: F64 | float, weekend: bool = False) -> F64:
    """Relative road demand by local hour: morning and evening peaks on weekdays."""
    h = np.asarray(hour, dtype=np.float64)
    if weekend:
        return 0.1 + 0.45 * _bump(h, 13.0, 4.0)
    return (
        0.08 + 0.92 * _bump(h, 8.0, 1.2) + 0.85 * _bump(h, 16.75, 1.5) + 0.3 * _bump(h, 12.5, 2.5)
    )


def water_profile(hour: F64 | float) -> F64:
    """Relative water demand: low at night (≈0.25), peaks at 07:30 and 19:30."""
    h = np.asarray(hour, dtype=np.float64)
    return 0.25 + 0.75 * _bump(h, 7.5, 1.5) + 0.55 * _bump(h, 19.5, 2.0) + 0.2 * _bump(h, 13.0, 3.0)


def parking_target(hour: float, centrality: F64) -> F64:
    """Target occupancy of car parks: the centre fills for the working day (full at midday),
    residential areas fill at night and half empty by day."""
    day = (
        1.0 / (1.0 + math.exp(-(hour - 8.0) * 2.0)) * (1.0 / (1.0 + math.exp((hour - 17.5) * 1.5)))
    )
    business = 0.06 + 0.97 * day
    residential = 0.9 - 0.5 * day
    w = np.clip((centrality - 0.35) / 0.4, 0.0, 1.0)
    out: F64 = w * business + (1.0 - w) * residential
    return out


def energy_profile(hour: float, commercial: Bool) -> F64:
    h = hour
    residential = 0.35 + 0.35 * float(_bump(h, 7.5, 1.3)) + 0.65 * float(_bump(h, 19.0, 2.2))
    business = 0.25 + 0.75 * float(_bump(h, 12.5, 3.5))
    return np.where(commercial, business, residential)


# -- static layout ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoadNetwork:
    """Intersections (nodes) and directed links with geometry, lanes and free-flow speed."""

    node_lat: F64
    node_lon: F64
    link_from: I64
    link_to: I64
    link_lanes: I64
    link_free_speed: F64  # km/h
    link_length_m: F64
    link_class: list[str]  # "ring" | "arterial" | "local"
    link_centrality: F64  # 1 at the centre, 0 at the edge
    link_weight: F64  # relative demand
    node_in_links: I64  # (nodes, 4), padded by repetition
    node_links: I64  # (nodes, 8) links touching the node, padded by repetition

    @property
    def links(self) -> int:
        return len(self.link_from)

    def link_coordinates(self) -> list[tuple[tuple[float, float], tuple[float, float]]]:
        """((lat, lon) from, (lat, lon) to) per link, for drawing."""
        a, b = self.link_from, self.link_to
        return [
            (
                (float(self.node_lat[i]), float(self.node_lon[i])),
                (float(self.node_lat[j]), float(self.node_lon[j])),
            )
            for i, j in zip(a.tolist(), b.tolist(), strict=True)
        ]


@dataclass(slots=True)
class KindLayout:
    """Where the sensors of one kind are and which rows (readings) each produces."""

    kind: DeviceKind
    spec: KindSpec
    device_ids: list[str]
    sensor_gateway: I64
    sensor_lat: F64
    sensor_lon: F64
    row_sensor: I64
    row_tags: list[dict[str, str]]
    #: kind-specific static attributes (link index, capacity, base demand ...)
    attrs: dict[str, npt.NDArray[np.generic]] = field(default_factory=dict)

    @property
    def sensors(self) -> int:
        return len(self.device_ids)

    @property
    def rows(self) -> int:
        return len(self.row_sensor)

    @property
    def row_gateway(self) -> I64:
        out: I64 = self.sensor_gateway[self.row_sensor]
        return out


@dataclass(frozen=True, slots=True)
class Routes:
    """Bus routes as polylines over the grid; segments stored flat for vectorised lookup."""

    names: list[str]
    length_m: F64  # per route
    seg_route: I64
    seg_start: F64  # distance along the route where each segment starts
    seg_len: F64
    seg_lat0: F64
    seg_lon0: F64
    seg_lat1: F64
    seg_lon1: F64
    seg_link_fwd: I64
    seg_link_bwd: I64
    seg_heading: F64  # degrees, forward direction
    route_first_seg: I64
    route_nseg: I64
    #: Per route, the intersections (road nodes) it runs through, in forward order: its stops.
    route_nodes: tuple[tuple[int, ...], ...] = ()


@dataclass(slots=True)
class Layout:
    scenario: Scenario
    roads: RoadNetwork
    routes: Routes
    gateway_ids: list[str]
    gateway_prefix: list[str]
    gateway_lat: F64
    gateway_lon: F64
    gateway_area: list[str]
    kinds: dict[DeviceKind, KindLayout]

    @property
    def gateways(self) -> int:
        return len(self.gateway_ids)


def _build_roads(scenario: Scenario) -> RoadNetwork:
    spec = scenario.city
    rows, cols, spacing = spec.grid.rows, spec.grid.cols, spec.grid.spacing_m
    lat0, lon0 = spec.centre
    r, c = np.divmod(np.arange(rows * cols), cols)
    dy = (r - (rows - 1) / 2) * spacing
    dx = (c - (cols - 1) / 2) * spacing
    node_lat = lat0 + dy / _M_PER_DEG
    node_lon = lon0 + dx / (_M_PER_DEG * math.cos(math.radians(lat0)))
    src: list[int] = []
    dst: list[int] = []
    cls: list[str] = []
    every = spec.grid.arterial_every
    for i in range(rows):
        for j in range(cols):
            n = i * cols + j
            for ni, nj, horizontal in ((i, j + 1, True), (i + 1, j, False)):
                if ni >= rows or nj >= cols:
                    continue
                m = ni * cols + nj
                line = i if horizontal else j
                edge = rows - 1 if horizontal else cols - 1
                kind = (
                    "ring" if line in (0, edge) else ("arterial" if line % every == 0 else "local")
                )
                src += [n, m]
                dst += [m, n]
                cls += [kind, kind]
    link_from = np.array(src, dtype=np.int64)
    link_to = np.array(dst, dtype=np.int64)
    lanes = np.array([{"ring": 3, "arterial": 2, "local": 1}[k] for k in cls], dtype=np.int64)
    free = np.array([{"ring": 70.0, "arterial": 50.0, "local": 40.0}[k] for k in cls])
    mid_dy = (dy[link_from] + dy[link_to]) / 2
    mid_dx = (dx[link_from] + dx[link_to]) / 2
    half = max(rows - 1, cols - 1) / 2 * spacing * math.sqrt(2)
    centrality = np.clip(1.0 - np.hypot(mid_dy, mid_dx) / half, 0.0, 1.0)
    boost = np.array([{"ring": 0.9, "arterial": 1.0, "local": 0.75}[k] for k in cls])
    weight = (0.35 + 0.5 * centrality) * boost
    n_nodes = rows * cols
    in_links: list[list[int]] = [[] for _ in range(n_nodes)]
    touching: list[list[int]] = [[] for _ in range(n_nodes)]
    for li, (a, b) in enumerate(zip(src, dst, strict=True)):
        in_links[b].append(li)
        touching[a].append(li)
        touching[b].append(li)
    node_in = np.array([(v * 4)[:4] for v in in_links], dtype=np.int64)
    node_all = np.array([(v * 8)[:8] for v in touching], dtype=np.int64)
    return RoadNetwork(
        node_lat=node_lat,
        node_lon=node_lon,
        link_from=link_from,
        link_to=link_to,
        link_lanes=lanes,
        link_free_speed=free,
        link_length_m=np.full(len(src), spacing),
        link_class=cls,
        link_centrality=centrality,
        link_weight=weight,
        node_in_links=node_in,
        node_links=node_all,
    )


def _bearing(lat0: F64, lon0: F64, lat1: F64, lon1: F64) -> F64:
    dy = lat1 - lat0
    dx = (lon1 - lon0) * np.cos(np.radians(lat0))
    out: F64 = np.degrees(np.arctan2(dx, dy)) % 360.0
    return out


def _build_routes(scenario: Scenario, roads: RoadNetwork) -> Routes:
    """Routes alternate between rows and columns of the grid (inner ones first)."""
    rows, cols = scenario.city.grid.rows, scenario.city.grid.cols
    link_of = {
        (int(a), int(b)): i
        for i, (a, b) in enumerate(zip(roads.link_from, roads.link_to, strict=True))
    }
    paths: list[list[int]] = []
    names: list[str] = []
    order_r = sorted(range(rows), key=lambda i: abs(i - (rows - 1) / 2))
    order_c = sorted(range(cols), key=lambda j: abs(j - (cols - 1) / 2))
    for k in range(scenario.city.bus_routes):
        if k % 2 == 0:
            i = order_r[(k // 2) % rows]
            paths.append([i * cols + j for j in range(cols)])
        else:
            j = order_c[(k // 2) % cols]
            paths.append([i * cols + j for i in range(rows)])
        names.append(f"R{k + 1}")
    seg_route: list[int] = []
    a_nodes: list[int] = []
    b_nodes: list[int] = []
    first: list[int] = []
    nseg: list[int] = []
    for ri, path in enumerate(paths):
        first.append(len(a_nodes))
        nseg.append(len(path) - 1)
        for na, nb in itertools.pairwise(path):
            seg_route.append(ri)
            a_nodes.append(na)
            b_nodes.append(nb)
    a = np.array(a_nodes, dtype=np.int64)
    b = np.array(b_nodes, dtype=np.int64)
    fwd = np.array([link_of[(x, y)] for x, y in zip(a_nodes, b_nodes, strict=True)], dtype=np.int64)
    bwd = np.array([link_of[(y, x)] for x, y in zip(a_nodes, b_nodes, strict=True)], dtype=np.int64)
    seg_len = roads.link_length_m[fwd]
    seg_route_a = np.array(seg_route, dtype=np.int64)
    seg_start = np.zeros(len(a_nodes))
    lengths = np.zeros(len(paths))
    for ri in range(len(paths)):
        sl = slice(first[ri], first[ri] + nseg[ri])
        cum = np.cumsum(seg_len[sl])
        seg_start[sl] = cum - seg_len[sl]
        lengths[ri] = cum[-1]
    return Routes(
        names=names,
        length_m=lengths,
        seg_route=seg_route_a,
        seg_start=seg_start,
        seg_len=seg_len,
        seg_lat0=roads.node_lat[a],
        seg_lon0=roads.node_lon[a],
        seg_lat1=roads.node_lat[b],
        seg_lon1=roads.node_lon[b],
        seg_link_fwd=fwd,
        seg_link_bwd=bwd,
        seg_heading=_bearing(
            roads.node_lat[a], roads.node_lon[a], roads.node_lat[b], roads.node_lon[b]
        ),
        route_first_seg=np.array(first, dtype=np.int64),
        route_nseg=np.array(nseg, dtype=np.int64),
        route_nodes=tuple(tuple(p) for p in paths),
    )


def _area(centrality: float) -> str:
    return "centre" if centrality >= 0.6 else ("inner" if centrality >= 0.3 else "outer")


def build_layout(scenario: Scenario) -> Layout:
    """The static city for a scenario: grid, routes, gateways and every sensor's place."""
    rng = np.random.default_rng([scenario.seed, 0x1A7])
    roads = _build_roads(scenario)
    routes = _build_routes(scenario, roads)
    n_nodes = len(roads.node_lat)
    # Gateways: ids per profile; cabinets sit at intersections, spread by a seeded permutation.
    gw_ids: list[str] = []
    gw_prefix: list[str] = []
    for profile in scenario.gateways:
        gw_ids += [f"{profile.prefix}-{i:04d}" for i in range(profile.count)]
        gw_prefix += [profile.prefix] * profile.count
    n_gw = len(gw_ids)
    perm = rng.permutation(n_nodes)
    gw_node = perm[np.arange(n_gw) % n_nodes]
    jitter = rng.normal(0.0, 15.0, (n_gw, 2)) / _M_PER_DEG
    gw_lat = roads.node_lat[gw_node] + jitter[:, 0]
    gw_lon = roads.node_lon[gw_node] + jitter[:, 1]
    lat0, lon0 = scenario.city.centre
    rows, cols, spacing = (
        scenario.city.grid.rows,
        scenario.city.grid.cols,
        scenario.city.grid.spacing_m,
    )
    half = max(rows - 1, cols - 1) / 2 * spacing * math.sqrt(2)

    def centrality_at(lat: F64, lon: F64) -> F64:
        dy = (lat - lat0) * _M_PER_DEG
        dx = (lon - lon0) * _M_PER_DEG * math.cos(math.radians(lat0))
        out: F64 = np.clip(1.0 - np.hypot(dy, dx) / half, 0.0, 1.0)
        return out

    gw_centrality = centrality_at(gw_lat, gw_lon)
    kinds: dict[DeviceKind, KindLayout] = {}
    gw_start = np.cumsum([0] + [p.count for p in scenario.gateways])
    for kind in DEVICE_KINDS:
        per_profile = [(pi, p.devices.get(kind, 0)) for pi, p in enumerate(scenario.gateways)]
        gws: list[npt.NDArray[np.int64]] = []
        slot: list[npt.NDArray[np.int64]] = []
        for pi, n in per_profile:
            if n == 0:
                continue
            g = np.arange(gw_start[pi], gw_start[pi + 1], dtype=np.int64)
            gws.append(np.repeat(g, n))
            slot.append(np.tile(np.arange(n, dtype=np.int64), len(g)))
        if not gws:
            continue
        sensor_gw = np.concatenate(gws)
        sensor_slot = np.concatenate(slot)
        n = len(sensor_gw)
        node = gw_node[sensor_gw]
        ids = [f"{kind}-{i:05d}" for i in range(n)]
        spread = rng.normal(0.0, 40.0, (n, 2)) / _M_PER_DEG
        lat = gw_lat[sensor_gw] + spread[:, 0]
        lon = gw_lon[sensor_gw] + spread[:, 1]
        attrs: dict[str, npt.NDArray[np.generic]] = {}
        row_sensor = np.arange(n, dtype=np.int64)
        row_tags: list[dict[str, str]] = [{} for _ in range(n)]
        if kind == "loop":
            link = roads.node_in_links[node, sensor_slot % 4]
            attrs["link"] = link
            lat = (
                roads.node_lat[roads.link_from[link]] * 0.3
                + roads.node_lat[roads.link_to[link]] * 0.7
            )
            lon = (
                roads.node_lon[roads.link_from[link]] * 0.3
                + roads.node_lon[roads.link_to[link]] * 0.7
            )
            lanes = roads.link_lanes[link]
            row_sensor = np.repeat(np.arange(n, dtype=np.int64), lanes)
            lane_no = np.concatenate([np.arange(1, k + 1) for k in lanes.tolist()])
            attrs["row_lane"] = lane_no
            row_tags = [{"lane": str(x)} for x in lane_no.tolist()]
        elif kind == "bus":
            route = np.arange(n, dtype=np.int64) % len(routes.names)
            attrs["route"] = route
            attrs["capacity"] = rng.choice(np.array([60, 80, 120]), n)
            attrs["s0"] = rng.uniform(0.0, 2.0, n) * routes.length_m[route]
        elif kind == "parking":
            attrs["capacity"] = rng.integers(80, 801, n)
        elif kind in ("air", "noise"):
            attrs["links"] = roads.node_links[node]
        elif kind == "water":
            attrs["base_m3h"] = rng.uniform(15.0, 120.0, n)
            attrs["total0"] = rng.uniform(1e4, 1e6, n)
        elif kind == "energy":
            attrs["base_w"] = rng.uniform(20e3, 400e3, n)
            attrs["total0"] = rng.uniform(1e4, 5e6, n)
        c = centrality_at(lat, lon)
        attrs["centrality"] = c
        if kind == "energy":
            attrs["commercial"] = c > 0.45
        kinds[kind] = KindLayout(
            kind=kind,
            spec=KIND_SPECS[kind],
            device_ids=ids,
            sensor_gateway=sensor_gw,
            sensor_lat=np.asarray(lat, dtype=np.float64),
            sensor_lon=np.asarray(lon, dtype=np.float64),
            row_sensor=row_sensor,
            row_tags=row_tags,
            attrs=attrs,
        )
    return Layout(
        scenario=scenario,
        roads=roads,
        routes=routes,
        gateway_ids=gw_ids,
        gateway_prefix=gw_prefix,
        gateway_lat=gw_lat,
        gateway_lon=gw_lon,
        gateway_area=[_area(float(x)) for x in gw_centrality],
        kinds=kinds,
    )


# -- dynamic state and frames -----------------------------------------------------------------


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
        phi = math.exp(-max(dt_s, 1.0) / 900.0)
        self._link_noise = phi * self._link_noise + math.sqrt(1 - phi * phi) * rng.standard_normal(
            roads.links
        )
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
            phi_a = math.exp(-max(dt_s, 1.0) / 3600.0)
            self._air_noise = phi_a * self._air_noise + math.sqrt(
                1 - phi_a * phi_a
            ) * rng.standard_normal(ak.sensors)
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
            phi_w = math.exp(-max(dt_s, 1.0) / 1800.0)
            self._water_noise = phi_w * self._water_noise + math.sqrt(
                1 - phi_w * phi_w
            ) * rng.standard_normal(wk.sensors)
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
            phi_e = math.exp(-max(dt_s, 1.0) / 600.0)
            self._energy_noise = phi_e * self._energy_noise + math.sqrt(
                1 - phi_e * phi_e
            ) * rng.standard_normal(ek.sensors)
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
