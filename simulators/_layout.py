"""The static city: road grid, bus routes, gateways and sensors, built once per scenario.

::

    scenario ──▶ build_layout ──▶ Layout
                   ├─ RoadNetwork   grid of intersections, directed links (lanes, free-flow
                   │                speed, class, centrality, demand weight)
                   ├─ Routes        bus routes as polylines over the grid (flat segments)
                   ├─ gateways      ids, places, areas (centre / inner / outer)
                   └─ KindLayout    per device kind: sensors, their gateway and place, the
                                    rows (readings) each produces with their tags

Deterministic: drawn from a ``numpy.random.Generator`` seeded by the scenario.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from simulators._areas import M_PER_DEG as _M_PER_DEG
from simulators._areas import area_of, city_radius_m
from simulators._kinds import KIND_SPECS, KindSpec
from simulators._scenario import DEVICE_KINDS, DeviceKind, Scenario

__all__ = ["F64", "I64", "Bool", "KindLayout", "Layout", "RoadNetwork", "Routes", "build_layout"]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]



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
    half = city_radius_m(scenario)

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
        gateway_area=[area_of(float(x)) for x in gw_centrality],
        kinds=kinds,
    )
