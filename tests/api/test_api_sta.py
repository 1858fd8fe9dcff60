"""OGC SensorThings API 1.1 (read side) against real data: publisher -> mosquitto -> ingest
-> InfluxDB and the API's live state, read over HTTP under /sta/v1.1.

Each entity set and its id mapping, navigation, the query options ($filter, $select,
$expand, $orderby, $top/$skip with @iot.nextLink, $count) and their bounds, Observations and
HistoricalLocations from InfluxDB, and the refusals (writes, unsupported options).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any
from urllib.parse import quote

import pytest
from api_helpers import ApiStack
from hypothesis import given, settings
from hypothesis import strategies as st
from standards_city import AQ, BUS_TRACK, MIN, load_city

from api._errors import ProblemError
from api._params import iso
from api.standards import _sta as sta
from api.storage import FieldCondition, FieldFilter, ObservationQuery

pytestmark = pytest.mark.integration

STA = "/sta/v1.1"
PM25 = "ngsi-gw1:aq-1:AirQualityObserved.pm25"
LANE2 = "ngsi-gw1:loop-3:TrafficFlowObserved.intensity:lane=2"


@pytest.fixture(scope="module")
def city(api_stack: ApiStack) -> dict[str, int]:
    return load_city(api_stack)


def _get(stack: ApiStack, path: str, role: str | None = "viewer", **params: Any) -> Any:
    response = stack.get(STA + path, role=role, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def _refused(stack: ApiStack, path: str, status: int, **params: Any) -> dict[str, Any]:
    response = stack.get(STA + path, params=params)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    return body


def _path(set_: str, id_: str) -> str:
    return f"/{set_}('{quote(id_, safe=':=~')}')"


def test_service_root_and_entity_sets(api_stack: ApiStack, city: dict[str, int]) -> None:
    root = _get(api_stack, "")
    names = {s["name"] for s in root["value"]}
    assert {"Things", "Locations", "Datastreams", "Observations", "Sensors",
            "ObservedProperties", "HistoricalLocations", "FeaturesOfInterest"} == names
    assert all(s["url"].startswith(api_stack.url + STA + "/") for s in root["value"])
    things = _get(api_stack, "/Things")["value"]
    assert [t["@iot.id"] for t in things] == ["ngsi-gw1", "ngsi-gw2"]
    gw1 = things[0]
    assert gw1["@iot.selfLink"] == f"{api_stack.url}{STA}/Things('ngsi-gw1')"
    assert gw1["Datastreams@iot.navigationLink"].endswith("/Things('ngsi-gw1')/Datastreams")
    assert gw1["properties"]["devices"] == ["aq-1", "loop-3", "noise-1", "park-1"]
    sensor = _get(api_stack, _path("Sensors", "ngsi-gw2:bus~3A7"))
    assert sensor["name"] == "bus:7"
    assert sensor["metadata"] == "gps"
    prop = _get(api_stack, _path("ObservedProperties", "AirQualityObserved.pm25"))
    assert prop["definition"] == "https://smartdatamodels.org/dataModel.Environment/pm25"
    ds = _get(api_stack, _path("Datastreams", PM25))
    assert ds["unitOfMeasurement"] == {"name": "ug/m3", "symbol": "ug/m3",
                                       "definition": "http://unitsofmeasure.org/ucum.html#ug/m3"}
    assert ds["observationType"].endswith("OM_Measurement")
    assert ds["properties"]["measurement"] == "AirQualityObserved"
    count = _get(api_stack, _path("Datastreams", "ngsi-gw1:loop-3:"
                                  "TrafficFlowObserved.vehicleCount:lane=1"))
    assert count["observationType"].endswith("OM_CountObservation")
    foi = _get(api_stack, _path("FeaturesOfInterest", "ngsi-gw1:aq-1"))
    assert foi["feature"] == {"type": "Point", "coordinates": [10.7522, 59.9139]}
    # Navigation to one entity and to a property.
    assert _get(api_stack, _path("Datastreams", PM25) + "/Thing")["@iot.id"] == "ngsi-gw1"
    assert _get(api_stack, _path("Datastreams", PM25) + "/Sensor/Datastreams",
                **{"$count": "true"})["@iot.count"] == 3
    assert _get(api_stack, _path("Things", "ngsi-gw1") + "/name") == {"name": "ngsi-gw1"}
    _refused(api_stack, _path("Things", "nope"), 404)
    _refused(api_stack, "/Widgets", 404)


def test_locations_and_historical_locations_of_the_bus(api_stack: ApiStack,
                                                       city: dict[str, int]) -> None:
    (live,) = _get(api_stack, _path("Things", "ngsi-gw2") + "/Locations")["value"]
    assert live["@iot.id"] == "ngsi-gw2:bus~3A7"
    assert live["location"] == {"type": "Point", "coordinates": [10.7, 59.93]}
    history = _get(api_stack, _path("Things", "ngsi-gw2") + "/HistoricalLocations",
                   **{"$expand": "Locations", "$count": "true"})
    assert history["@iot.count"] == 4
    times = [h["time"] for h in history["value"]]
    now = city[AQ]
    assert times == [iso(now - i * MIN) for i in range(4)]
    positions = [h["Locations"][0]["location"]["coordinates"] for h in history["value"]]
    assert positions == [[10.7, 59.93]] + [[lon, lat] for lat, lon in reversed(BUS_TRACK)]
    one = history["value"][1]["@iot.id"]
    assert _get(api_stack, _path("HistoricalLocations", one) + "/Thing")["name"] == "ngsi-gw2"
    paged = _get(api_stack, _path("Things", "ngsi-gw2") + "/HistoricalLocations",
                 **{"$top": 3})
    assert len(paged["value"]) == 3
    assert "@iot.nextLink" in paged
    _refused(api_stack, "/HistoricalLocations", 400)


def test_filter_select_orderby_expand_and_paging(api_stack: ApiStack,
                                                 city: dict[str, int]) -> None:
    lanes = _get(api_stack, "/Datastreams", **{
        "$filter": "properties/measurement eq 'TrafficFlowObserved' and "
                   "(properties/lane eq '2' or properties/field eq 'nothing')",
        "$select": "name,unitOfMeasurement", "$orderby": "name desc"})["value"]
    assert [d["name"] for d in lanes] == sorted(
        (f"ngsi-gw1/loop-3 TrafficFlowObserved.{f} lane=2"
         for f in ("averageVehicleSpeed", "intensity", "occupancy", "vehicleCount")),
        reverse=True)
    assert all(set(d) == {"name", "unitOfMeasurement"} for d in lanes)
    negated = _get(api_stack, "/Things", **{"$filter": "not (name eq 'ngsi-gw1')"})["value"]
    assert [t["name"] for t in negated] == ["ngsi-gw2"]
    page1 = _get(api_stack, "/Datastreams", **{"$top": 10, "$count": "true"})
    assert page1["@iot.count"] == 23
    nxt = api_stack.client("viewer").get(page1["@iot.nextLink"]).json()
    last = api_stack.client("viewer").get(nxt["@iot.nextLink"]).json()
    ids = [d["@iot.id"] for d in page1["value"] + nxt["value"] + last["value"]]
    assert len(ids) == len(set(ids)) == 23
    assert "@iot.nextLink" not in last
    # $expand two levels deep, with options at each level; Observations from InfluxDB.
    thing = _get(api_stack, _path("Things", "ngsi-gw1"), **{
        "$expand": "Datastreams($filter=name eq 'ngsi-gw1/aq-1 AirQualityObserved.pm25';"
                   "$expand=Observations($top=3;$orderby=phenomenonTime desc;$count=true))",
        "$select": "name,Datastreams"})
    (ds,) = thing["Datastreams"]
    assert [o["result"] for o in ds["Observations"]] == [19.0, 18.0, 17.0]
    assert ds["Observations@iot.count"] == 10
    more = api_stack.client("viewer").get(ds["Observations@iot.nextLink"]).json()
    assert [o["result"] for o in more["value"]] == [16.0, 15.0, 14.0]  # its options kept
    obs = ds["Observations"][0]
    assert obs["phenomenonTime"] == iso(city[AQ])
    assert obs["@iot.id"] == f"{PM25}:{city[AQ]}"
    again = _get(api_stack, _path("Observations", obs["@iot.id"]),
                 **{"$expand": "Datastream/Thing,FeatureOfInterest"})
    assert again["result"] == 19.0
    assert again["Datastream"]["Thing"]["name"] == "ngsi-gw1"
    assert again["FeatureOfInterest"]["@iot.id"] == "ngsi-gw1:aq-1"
    short = _get(api_stack, _path("Datastreams", "ngsi-gw1:aq-1:AirQualityObserved.pm25") +
                 "/Observations", **{"$filter": "not (result lt 18) or result eq 10"})
    assert [o["result"] for o in short["value"]] == [10.0, 18.0, 19.0]
    only_time = _get(api_stack, _path("Datastreams", PM25) + "/Observations", **{
        "$filter": f"phenomenonTime eq {iso(city[AQ] - 2 * MIN)}"})
    assert [o["result"] for o in only_time["value"]] == [17.0]
    strings = _get(api_stack, _path("Datastreams", "ngsi-gw2:bus~3A7:Vehicle.routeId") +
                   "/Observations", **{"$filter": "result eq '31'", "$count": "true"})
    assert strings["@iot.count"] == 4


def test_bounds_and_refusals(api_stack: ApiStack, city: dict[str, int]) -> None:
    obs = _path("Datastreams", PM25) + "/Observations"
    for params, status in (
        ({"$top": "1001"}, 400),
        ({"$top": "-1"}, 400),
        ({"$skip": "1000001"}, 400),
        ({"$count": "yes"}, 400),
        ({"$filter": "name eq"}, 400),
        ({"$filter": "name eq 'x' and"}, 400),
        ({"$filter": "x" * 1001}, 400),
        ({"$filter": " or ".join(["name eq 'a'"] * 40)}, 400),
        ({"$filter": "(" * 20 + "name eq 'a'" + ")" * 20}, 400),
        ({"$filter": "substringof('gw', name)"}, 400),
        ({"$filter": "Datastreams/name eq 'x'"}, 400),
        ({"$expand": "Datastreams/Observations/Datastream"}, 400),
        ({"$expand": "Datastreams($expand=Sensor($expand=Datastreams))"}, 400),
        ({"$expand": "Nothing"}, 400),
        ({"$select": "name;drop"}, 400),
        ({"$select": "nothing"}, 400),
        ({"$orderby": "name sideways"}, 400),
        ({"$resultFormat": "dataArray"}, 400),
        ({"bogus": "1"}, 400),
        ({"$top": "1", "$top ": "2"}, 400),
    ):
        _refused(api_stack, "/Things", status, **params)
    for params, status in (
        ({"$filter": "name eq 'x'"}, 400),
        ({"$filter": "phenomenonTime gt 2020-01-01T00:00:00Z or result gt 1"}, 400),
        ({"$filter": "result gt 2020-01-01T00:00:00Z"}, 400),
        ({"$filter": "phenomenonTime ne 2020-01-01T00:00:00Z"}, 400),
        ({"$orderby": "result"}, 400),
    ):
        _refused(api_stack, obs, status, **params)
    for path in ("/Observations", _path("FeaturesOfInterest", "ngsi-gw1:aq-1") + "/Observations",
                 "/Things('ngsi-gw1')/$ref"):
        body = _refused(api_stack, path, 400)
        assert body["type"] == "urn:smartcity:problem:not-supported", body
    client = api_stack.client("admin")
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        response = client.request(method, STA + "/Things", json={"name": "x"})
        assert response.status_code == 405, (method, response.text)
        assert response.headers["allow"] == "GET"
    response = api_stack.get(STA + "/Things", role=None)
    assert response.status_code == 401
    assert response.json()["type"] == "urn:smartcity:problem:unauthorized"


# Pure functions: no input gets anything but a result or a problem.

@given(st.text(max_size=120))
@settings(max_examples=400, deadline=None)
def test_filter_and_expand_parsers_answer_or_refuse_cleanly(text: str) -> None:
    for parse in (sta.parse_filter, sta.parse_expand):
        status = 200
        try:
            parse(text)
        except ProblemError as exc:
            status = exc.status_code
        assert 200 <= status < 500


@given(st.text(min_size=1, max_size=30))
@settings(max_examples=300, deadline=None)
def test_id_segments_round_trip(text: str) -> None:
    segment = sta.encode(text)
    assert ":" not in segment
    assert "'" not in segment
    assert "/" not in segment
    assert sta.decode(segment) == text


def test_observation_statements_are_built_from_validated_quoted_values() -> None:
    query = ObservationQuery(
        measurement="Vehicle", gateway="bus-gw", device="bus:7", tags={"lane": "1"},
        field="routeId", times=[(">=", 5), ("<", 10)],
        value=FieldFilter("OR", (FieldCondition("=", "3' OR 1=1 --"),
                                 FieldCondition(">", 2.0))), limit=10, offset=5)
    assert query.render() == (
        'SELECT "routeId" FROM "Vehicle" WHERE "gateway" = \'bus-gw\' AND "device" = '
        '\'bus:7\' AND "lane" = \'1\' AND time >= 5 AND time < 10 AND ("routeId" = '
        "'3\\' OR 1=1 --' OR \"routeId\" > 2.0) ORDER BY time ASC LIMIT 10 OFFSET 5")
    assert query.render_count().startswith('SELECT count("routeId") AS "count" FROM "Vehicle"')
    for bad, why in ((FieldCondition("=~", 1.0), "comparison"),
                     (FieldCondition("=", float("nan")), "finite")):
        with pytest.raises(ValueError, match=why):
            bad.render("speed")
    with pytest.raises(ValueError, match="AND or OR"):
        FieldFilter("XOR", (FieldCondition("=", 1.0),)).render("speed")
    for broken, why in (({"measurement": 'x" DROP'}, "measurement"), ({"field": "a b"}, "field"),
                        ({"device": "d'"}, "device"), ({"times": [("!=", 1)]}, "time"),
                        ({"limit": 0}, "limit")):
        with pytest.raises(ValueError, match=why):
            replace(query, **broken).render()
