"""The city's areas as polygons: where a moving device is *now*.

A gateway's birth names the area of each device (``location.area``): right for a parking
sensor, wrong for a bus, which is announced once where its agent starts and then drives across
the city. A reading that carries its own position (``latitude`` and ``longitude`` fields) is
therefore placed by that position, in the area of this map that contains it, and in no area
when no map is configured or no area contains it (never in its start-up area).

The map is a GeoJSON ``FeatureCollection`` (RFC 7946: longitude first) of ``Polygon`` and
``MultiPolygon`` features, each named by ``properties.name`` (or ``properties.area``). Holes
are honoured (even-odd rule over all rings of a feature). Where areas overlap, the first
feature in the file wins. ``smartcity sim areas`` writes the simulated city's map.

Cost: one numpy pass over every edge of the map per located reading (a few microseconds for
a city of a few hundred edges), after a bounding-box test per area.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from api._errors import ConfigError
from api._params import AREA_PATTERN

__all__ = ["AreaMap"]

#: Bounds against a map file that would make every reading slow: edges and areas.
MAX_EDGES: Final = 200_000
MAX_AREAS: Final = 10_000
MAX_BYTES: Final = 64 * 2**20
_NAME_RE: Final = re.compile(AREA_PATTERN)

F64 = npt.NDArray[np.float64]


class AreaMap:
    """Named polygons; :meth:`locate` answers the area containing a point."""

    def __init__(self, areas: list[tuple[str, list[list[tuple[float, float]]]]]) -> None:
        """``areas``: (name, rings), each ring a closed or open list of (lon, lat)."""
        if not areas:
            raise ValueError("an area map needs at least one area")
        self.names = [name for name, _ in areas]
        x1: list[float] = []
        y1: list[float] = []
        x2: list[float] = []
        y2: list[float] = []
        owner: list[int] = []
        bbox = np.empty((len(areas), 4))
        for index, (_name, rings) in enumerate(areas):
            xs_all: list[float] = []
            ys_all: list[float] = []
            for ring in rings:
                pts = ring[:-1] if len(ring) > 1 and ring[0] == ring[-1] else ring
                if len(pts) < 3:
                    raise ValueError(f"area {self.names[index]!r}: a ring needs 3 points")
                for (ax, ay), (bx, by) in zip(pts, pts[1:] + pts[:1], strict=True):
                    x1.append(ax)
                    y1.append(ay)
                    x2.append(bx)
                    y2.append(by)
                    owner.append(index)
                xs_all += [p[0] for p in pts]
                ys_all += [p[1] for p in pts]
            bbox[index] = (min(xs_all), min(ys_all), max(xs_all), max(ys_all))
        self._x1, self._y1 = np.array(x1), np.array(y1)
        self._x2, self._y2 = np.array(x2), np.array(y2)
        self._owner = np.array(owner, dtype=np.int64)
        self._bbox = bbox
        # Horizontal edges never cross a horizontal ray; the slope is safe where y1 != y2.
        dy = self._y2 - self._y1
        self._inv_dy = np.divide(1.0, dy, out=np.zeros_like(dy), where=dy != 0)

    def __len__(self) -> int:
        return len(self.names)

    def locate(self, lat: float, lon: float) -> str | None:
        """The first area containing (lat, lon), or ``None``."""
        b = self._bbox
        near = (b[:, 0] <= lon) & (lon <= b[:, 2]) & (b[:, 1] <= lat) & (lat <= b[:, 3])
        if not near.any():
            return None
        # Ray casting to +x: an edge counts when it straddles the point's y and its crossing
        # lies to the right of the point. The half-open test (y1 > y) != (y2 > y) counts a
        # vertex on the ray once.
        y1, y2 = self._y1, self._y2
        straddle = (y1 > lat) != (y2 > lat)
        cross_x = self._x1 + (lat - y1) * (self._x2 - self._x1) * self._inv_dy
        hits = straddle & (lon < cross_x) & near[self._owner]
        counts = np.bincount(self._owner[hits], minlength=len(self.names))
        inside = np.flatnonzero(counts & 1)
        return self.names[int(inside[0])] if inside.size else None

    @classmethod
    def load(cls, path: Path) -> AreaMap:
        """Read a GeoJSON area map; raise :class:`ConfigError` naming the file and the fault."""
        where = f"areas_path {path}"
        try:
            size = path.stat().st_size
            if size > MAX_BYTES:
                raise ConfigError(f"{where}: {size} bytes, more than {MAX_BYTES}")
            data = json.loads(path.read_bytes())
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read: {exc.strerror or exc}") from exc
        except ValueError as exc:
            raise ConfigError(f"{where}: not JSON: {exc}") from exc
        try:
            return cls(_parse(data))
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from exc


def _coord(value: Any, where: str) -> tuple[float, float]:
    if (
        not isinstance(value, list) or len(value) < 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value[:2])
    ):
        raise ValueError(f"{where}: a position is [longitude, latitude]")
    lon, lat = float(value[0]), float(value[1])
    if not (-180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0):
        raise ValueError(f"{where}: position {value[:2]} is outside [-180, 180] x [-90, 90]")
    return lon, lat


def _rings(geometry: Any, where: str) -> list[list[tuple[float, float]]]:
    if not isinstance(geometry, dict):
        raise ValueError(f"{where}: geometry must be an object")
    kind, coords = geometry.get("type"), geometry.get("coordinates")
    if kind == "Polygon":
        polygons = [coords]
    elif kind == "MultiPolygon" and isinstance(coords, list):
        polygons = coords
    else:
        raise ValueError(f"{where}: geometry type must be Polygon or MultiPolygon, not {kind!r}")
    rings: list[list[tuple[float, float]]] = []
    for polygon in polygons:
        if not isinstance(polygon, list) or not polygon:
            raise ValueError(f"{where}: a polygon is a non-empty list of rings")
        for ring in polygon:
            if not isinstance(ring, list):
                raise ValueError(f"{where}: a ring is a list of positions")
            rings.append([_coord(p, where) for p in ring])
    return rings


def _parse(data: Any) -> list[tuple[str, list[list[tuple[float, float]]]]]:
    if not isinstance(data, dict) or data.get("type") != "FeatureCollection":
        raise ValueError("must be a GeoJSON FeatureCollection")
    features = data.get("features")
    if not isinstance(features, list) or not features:
        raise ValueError("features must be a non-empty list")
    if len(features) > MAX_AREAS:
        raise ValueError(f"{len(features)} features, more than {MAX_AREAS}")
    areas: list[tuple[str, list[list[tuple[float, float]]]]] = []
    edges = 0
    for i, feature in enumerate(features):
        where = f"features[{i}]"
        if not isinstance(feature, dict):
            raise ValueError(f"{where}: must be a Feature object")
        props = feature.get("properties") or {}
        name = props.get("name", props.get("area")) if isinstance(props, dict) else None
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ValueError(
                f"{where}: properties.name must be an area name (letters, digits, ' ._:-', "
                "at most 64)"
            )
        rings = _rings(feature.get("geometry"), where)
        edges += sum(len(r) for r in rings)
        if edges > MAX_EDGES:
            raise ValueError(f"more than {MAX_EDGES} positions in all")
        areas.append((name, rings))
    return areas
