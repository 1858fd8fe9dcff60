"""Areas: a reading with its own position (a bus) is in the area it is in now, not in the
area its gateway's birth announced (where its agent started)."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from api_helpers import ApiStack, Publisher, device, start_stack, wait_until

from api import ApiError, ApiSettings
from api._services import prepare_connections
from api.state import AreaMap
from simulators import areas_geojson, export_areas, load_scenario
from simulators._areas import area_of, city_radius_m
from smartcity._localstack import Influxd, Mosquitto


def _square(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def _collection(*features: tuple[str, Any]) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"name": name}, "geometry": geometry}
        for name, geometry in features
    ]}


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / f"areas-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_polygons_with_holes_and_overlaps(tmp_path: Path) -> None:
    ring_road = {"type": "Polygon", "coordinates": [_square(0, 0, 10, 10), _square(3, 3, 7, 7)]}
    core = {"type": "Polygon", "coordinates": [_square(3, 3, 7, 7)]}
    islands = {"type": "MultiPolygon", "coordinates": [
        [_square(20, 0, 21, 1)], [_square(30, 0, 31, 1)],
    ]}
    both = {"type": "Polygon", "coordinates": [_square(0, 0, 40, 40)]}
    areas = AreaMap.load(_write(tmp_path, _collection(
        ("ring", ring_road), ("core", core), ("islands", islands), ("everywhere", both),
    )))
    assert len(areas) == 4
    # (lat, lon): y is latitude, x longitude (GeoJSON positions are [lon, lat]).
    assert areas.locate(1.0, 1.0) == "ring"
    assert areas.locate(5.0, 5.0) == "core"  # the hole of `ring`, filled by `core`
    assert areas.locate(0.5, 30.5) == "islands"
    assert areas.locate(0.5, 25.0) == "everywhere"  # between the islands; first match wins
    assert areas.locate(50.0, 50.0) is None
    assert areas.locate(math.nan, 1.0) is None
    # A vertex on the ray is counted once: a point level with a corner is still inside.
    assert areas.locate(3.0, 1.0) == "ring"


@pytest.mark.parametrize(
    ("content", "fault"),
    [
        ("{not json", "not JSON"),
        ({"type": "Feature"}, "FeatureCollection"),
        ({"type": "FeatureCollection", "features": []}, "non-empty"),
        (_collection(("a b!", {"type": "Polygon", "coordinates": [_square(0, 0, 1, 1)]})),
         "properties.name"),
        (_collection(("a", {"type": "Point", "coordinates": [0, 0]})), "Polygon or MultiPolygon"),
        (_collection(("a", {"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]})), "3 points"),
        (_collection(("a", {"type": "Polygon", "coordinates": [_square(0, 0, 1, 200)]})),
         "outside"),
        (_collection(("a", {"type": "Polygon", "coordinates": [[[0, 0], [1, True], [1, 1]]]})),
         "[longitude, latitude]"),
    ],
)
def test_a_bad_area_map_is_refused_naming_the_file(
    tmp_path: Path, content: object, fault: str
) -> None:
    path = _write(tmp_path, content)
    with pytest.raises(ApiError) as caught:
        AreaMap.load(path)
    assert str(path) in str(caught.value)
    assert fault in str(caught.value)
    # The API refuses to start on it, as it does for a bad GTFS feed.
    with pytest.raises(ApiError):
        prepare_connections(ApiSettings(areas_path=path, database_url="sqlite://"))


def test_the_simulated_citys_map_agrees_with_the_city_model() -> None:
    """``sim areas`` draws the model's centrality rings: every point lands in the area the
    simulator gives it (away from the 0.1 % chord error at the boundaries)."""
    scenario = load_scenario("city")
    areas = AreaMap(
        [(f["properties"]["name"], f["geometry"]["coordinates"])
         for f in areas_geojson(scenario)["features"]]
    )
    lat0, lon0 = scenario.city.centre
    radius = city_radius_m(scenario)
    rng = np.random.default_rng(7)
    checked = 0
    for _ in range(3000):
        d = rng.uniform(0, 1.5) * radius
        a = rng.uniform(0, 2 * math.pi)
        centrality = max(0.0, 1.0 - d / radius)
        if min(abs(centrality - 0.6), abs(centrality - 0.3)) < 0.005:
            continue
        lat = lat0 + d * math.sin(a) / 111_320.0
        lon = lon0 + d * math.cos(a) / (111_320.0 * math.cos(math.radians(lat0)))
        expected = area_of(centrality)  # the city model's own rule
        assert areas.locate(lat, lon) == expected, (d / radius, a)
        checked += 1
    assert checked > 2500


@pytest.fixture(scope="module")
def areas_stack(
    mosquitto: Mosquitto, influxd: Influxd, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiStack]:
    root = f"t{uuid.uuid4().hex[:12]}"
    database = f"api_{uuid.uuid4().hex[:12]}"
    influxd.create_database(database)
    tmp = tmp_path_factory.mktemp("areas")
    areas = tmp / "areas.json"
    export_areas(load_scenario("city"), areas)
    stack = start_stack(mosquitto, influxd, root=root, database=database,
                        db_path=tmp / "api.sqlite3", areas_path=areas)
    try:
        yield stack
    finally:
        stack.close()
        influxd.drop_database(database)


@pytest.mark.integration
def test_a_bus_is_in_the_area_it_drives_through_not_where_it_started(
    areas_stack: ApiStack,
) -> None:
    scenario = load_scenario("city")
    lat0, lon0 = scenario.city.centre
    radius = city_radius_m(scenario)
    far_lat = lat0 + 0.9 * radius / 111_320.0  # outer
    publisher = Publisher(areas_stack.mosquitto, areas_stack.root)
    try:
        # The agent started at the depot, far out: its birth says so.
        publisher.birth("bus-7", [device("gps", "nmea-gps", area="depot", lat=far_lat,
                                         lon=lon0)])
        publisher.birth("cab-1", [device("park-1", "parking", area="old-town")])
        wait_until(lambda: areas_stack.get("/v1/gateways/bus-7").status_code == 200)
        publisher.reading("cab-1", "park-1", "OffStreetParking",
                          {"availableSpotNumber": 3, "totalSpotNumber": 10})
        publisher.reading("bus-7", "gps", "Vehicle",
                          {"latitude": lat0, "longitude": lon0, "routeId": "1"})

        def vehicle(query: str = "") -> dict[str, Any] | None:
            items = areas_stack.get(f"/v1/transport/vehicles{query}").json()["items"]
            return next((v for v in items if v["id"] == "bus-7:gps"), None)

        now = wait_until(vehicle)
        assert now is not None
        assert now["area"] == "centre"
        assert vehicle("?area=centre") is not None
        assert vehicle("?area=depot") is None
        # It drives out: the area follows the position.
        publisher.reading("bus-7", "gps", "Vehicle",
                          {"latitude": far_lat, "longitude": lon0, "routeId": "1"})
        wait_until(lambda: (vehicle() or {}).get("area") == "outer")
        assert vehicle("?area=centre") is None
        # A device without a position of its own keeps its announced area.
        parking = wait_until(
            lambda: areas_stack.get("/v1/live/cab-1/park-1").json().get("readings")
        )
        assert parking[0]["area"] == "old-town"
    finally:
        publisher.close()


@pytest.mark.integration
def test_without_an_area_map_a_bus_is_in_no_area(
    api_stack: ApiStack, publisher: Publisher
) -> None:
    publisher.birth("bus-na", [device("gps", "nmea-gps", area="depot")])
    wait_until(lambda: api_stack.get("/v1/gateways/bus-na").status_code == 200)
    publisher.reading("bus-na", "gps", "Vehicle", {"latitude": 59.9, "longitude": 10.7})

    def vehicle() -> dict[str, Any] | None:
        items = api_stack.get("/v1/transport/vehicles").json()["items"]
        return next((v for v in items if v["id"] == "bus-na:gps"), None)

    found = wait_until(vehicle)
    assert found is not None
    assert found["area"] is None  # not "depot": that is where its agent started

