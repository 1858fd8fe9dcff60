"""The simulated city's areas as a GeoJSON map, for the API's ``areas_path``.

The city model names three areas by centrality (:func:`area_of`: 1 at the centre, 0 at the
grid's corner circle): ``centre`` (centrality >= 0.6), ``inner`` (>= 0.3) and ``outer``. As
distance from the scenario's centre that is a disc of 0.4 x the radius, a ring out to
0.7 x the radius and everything beyond. The map draws them as polygons (72-gons; the
chord error is 0.1 % of the radius) so that the API places a moving bus in the area it is in
now, as the simulator would.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Final

from simulators._scenario import Scenario

__all__ = ["M_PER_DEG", "area_of", "areas_geojson", "city_radius_m", "export_areas"]

#: Metres per degree of latitude (and of longitude at the equator), the model's flat earth.
M_PER_DEG: Final = 111_320.0
_SIDES: Final = 72
#: The centrality at and above which a place is in the centre, and in the inner ring.
_CENTRE_AT: Final = 0.6
_INNER_AT: Final = 0.3
#: The same thresholds as fractions of the city radius.
_CENTRE_R: Final = 1.0 - _CENTRE_AT
_INNER_R: Final = 1.0 - _INNER_AT
#: How far the ``outer`` area reaches, in city radii (beyond: no area).
_OUTER_R: Final = 3.0


def area_of(centrality: float) -> str:
    """The area of a place of the city model by its centrality."""
    return "centre" if centrality >= _CENTRE_AT else (
        "inner" if centrality >= _INNER_AT else "outer"
    )


def city_radius_m(scenario: Scenario) -> float:
    """The distance (m) at which the model's centrality reaches 0: the grid's corner."""
    grid = scenario.city.grid
    return max(grid.rows - 1, grid.cols - 1) / 2 * grid.spacing_m * math.sqrt(2)


def _circle(lat0: float, lon0: float, radius_m: float, *, clockwise: bool) -> list[list[float]]:
    m_per_deg_lon = M_PER_DEG * math.cos(math.radians(lat0))
    steps = range(_SIDES, -1, -1) if clockwise else range(_SIDES + 1)
    ring = []
    for k in steps:
        a = 2 * math.pi * (k % _SIDES) / _SIDES
        ring.append([
            round(lon0 + radius_m * math.cos(a) / m_per_deg_lon, 7),
            round(lat0 + radius_m * math.sin(a) / M_PER_DEG, 7),
        ])
    return ring


def areas_geojson(scenario: Scenario) -> dict[str, Any]:
    """The scenario's areas as a GeoJSON FeatureCollection (RFC 7946 ring orientation)."""
    lat0, lon0 = scenario.city.centre
    radius = city_radius_m(scenario)

    def feature(name: str, rings: list[list[list[float]]]) -> dict[str, Any]:
        return {
            "type": "Feature",
            "properties": {"name": name},
            "geometry": {"type": "Polygon", "coordinates": rings},
        }

    centre = _circle(lat0, lon0, _CENTRE_R * radius, clockwise=False)
    inner = _circle(lat0, lon0, _INNER_R * radius, clockwise=False)
    outer = _circle(lat0, lon0, _OUTER_R * radius, clockwise=False)
    return {
        "type": "FeatureCollection",
        "features": [
            feature("centre", [centre]),
            feature("inner", [inner, _circle(lat0, lon0, _CENTRE_R * radius, clockwise=True)]),
            feature("outer", [outer, _circle(lat0, lon0, _INNER_R * radius, clockwise=True)]),
        ],
    }


def export_areas(scenario: Scenario, out: Path) -> int:
    """Write the scenario's area map to ``out``; return the number of areas."""
    data = areas_geojson(scenario)
    out.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    return len(data["features"])
