"""NGSI-LD interface against real data: publisher -> mosquitto -> ingest + API live state.

Entities of several Smart Data Models types are checked value by value (observedAt, unitCode,
location), each filter of the query, the representations and the content negotiation, the
errors as NGSI-LD ProblemDetails, and the temporal representation from InfluxDB. Every entity
body is validated against a JSON Schema transcribed from the ETSI NGSI-LD OpenAPI document
(GS CIM 009 V1.7.1: Entity, Property, GeoProperty, ProblemDetails).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import jsonschema_rs
import pytest
from api_helpers import ApiStack
from hypothesis import given, settings
from hypothesis import strategies as st
from standards_city import ALL, AQ, BUS, LANE1, LANE2, MIN, NOISE, PARK, TYPES, load_city

from api._params import iso
from api.standards import _ngsild as ngsild
from api.standards import _ngsild_http as ngsild_http
from api.standards import _ngsild_query as ngsild_query

pytestmark = pytest.mark.integration

BASE = "/ngsi-ld/v1"
LD = "application/ld+json"
ERR = "https://uri.etsi.org/ngsi-ld/errors/"
_MIN = MIN

# RFC 8141: "urn:" NID ":" NSS, NSS = pchar *(pchar / "/").
URN = re.compile(
    r"urn:[A-Za-z0-9][A-Za-z0-9-]{0,30}[A-Za-z0-9]:"
    r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@]|%[0-9A-F]{2})(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-F]{2})*"
)

# From the NGSI-LD OpenAPI document (components/schemas), reduced to what a consumer relies on.
_DATETIME = {"type": "string", "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$"}
_POINT = {
    "type": "object", "required": ["type", "coordinates"],
    "properties": {"type": {"const": "Point"},
                   "coordinates": {"type": "array", "minItems": 2, "maxItems": 3,
                                   "items": {"type": "number"}}},
}
PROPERTY = {
    "type": "object", "required": ["type", "value"],
    "properties": {"type": {"const": "Property"}, "value": {}, "observedAt": _DATETIME,
                   "unitCode": {"type": "string", "pattern": "^[0-9A-Z]{2,3}$"}},
}
GEOPROPERTY = {
    "type": "object", "required": ["type", "value"],
    "properties": {"type": {"const": "GeoProperty"}, "value": _POINT, "observedAt": _DATETIME},
}
ENTITY = {
    "type": "object", "required": ["id", "type"],
    "properties": {"id": {"type": "string", "pattern": "^urn:ngsi-ld:"},
                   "type": {"type": "string"}, "location": GEOPROPERTY,
                   "@context": {}},
    "additionalProperties": PROPERTY,
}
PROBLEM = {
    "type": "object", "required": ["type", "title", "status", "detail"],
    "properties": {"type": {"type": "string", "pattern": "^https://uri.etsi.org/ngsi-ld/errors/"},
                   "status": {"type": "integer"}, "detail": {"type": "string"}},
}
_entity_schema = jsonschema_rs.validator_for(ENTITY)
_problem_schema = jsonschema_rs.validator_for(PROBLEM)


def _valid(entity: dict[str, Any]) -> dict[str, Any]:
    _entity_schema.validate(entity)
    assert URN.fullmatch(entity["id"]), entity["id"]
    return entity


def _problem(response: Any, status: int, error: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    _problem_schema.validate(body)
    assert body["type"] == ERR + error, body
    return body


@pytest.fixture(scope="module")
def city(api_stack: ApiStack) -> dict[str, int]:
    return load_city(api_stack)


_TYPES = TYPES


def _get(stack: ApiStack, path: str, role: str | None = "viewer", **kwargs: Any) -> Any:
    return stack.get(BASE + path, role=role, **kwargs)


def _entities(stack: ApiStack, params: dict[str, Any], **kwargs: Any) -> list[dict[str, Any]]:
    response = _get(stack, "/entities", params=params, **kwargs)
    assert response.status_code == 200, response.text
    body: list[dict[str, Any]] = response.json()
    return [_valid(e) for e in body]


def _ids(stack: ApiStack, params: dict[str, Any]) -> set[str]:
    return {e["id"] for e in _entities(stack, {"limit": 1000, **params})}


def test_entities_of_several_types_carry_values_units_time_and_location(
    api_stack: ApiStack, city: dict[str, int]
) -> None:
    entities = {e["id"]: e for e in _entities(api_stack, {"type": ",".join(_TYPES),
                                                          "limit": 100})}
    assert set(entities) == ALL
    observed = iso(city[AQ])
    aq = entities[AQ]
    assert aq["type"] == "AirQualityObserved"
    assert aq["pm25"] == {"type": "Property", "value": 19.0, "observedAt": observed,
                          "unitCode": "GQ"}
    assert aq["temperature"]["unitCode"] == "CEL"
    assert aq["no2"]["value"] == 30.0
    assert aq["location"] == {"type": "GeoProperty",
                              "value": {"type": "Point", "coordinates": [10.7522, 59.9139]}}
    assert aq["dateObserved"] == {"type": "Property",
                                  "value": {"@type": "DateTime", "@value": observed}}
    assert aq["areaServed"] == {"type": "Property", "value": "centre"}

    lane = entities[LANE1]
    assert lane["type"] == "TrafficFlowObserved"
    assert lane["laneId"] == {"type": "Property", "value": 1}
    assert lane["averageVehicleSpeed"]["unitCode"] == "KMH"
    assert lane["occupancy"]["unitCode"] == "C62"
    assert "unitCode" not in lane["intensity"]  # veh/h has no UN/CEFACT code
    assert entities[LANE2]["intensity"]["value"] == 820.0

    bus = entities[BUS]
    assert bus["location"] == {"type": "GeoProperty", "observedAt": iso(city[BUS]),
                               "value": {"type": "Point", "coordinates": [10.7, 59.93]}}
    assert not {"latitude", "longitude", "dateObserved"} & set(bus)
    assert bus["speed"] == {"type": "Property", "value": 31.0, "observedAt": iso(city[BUS]),
                            "unitCode": "KMH"}
    assert bus["heading"]["unitCode"] == "DD"
    assert bus["routeId"] == {"type": "Property", "value": "31", "observedAt": iso(city[BUS])}

    park = entities[PARK]
    assert "dateObserved" not in park  # not in the OffStreetParking data model
    assert park["availableSpotNumber"]["value"] == 40
    assert park["totalSpotNumber"]["unitCode"] == "C62"
    assert entities[NOISE]["LAeq"]["unitCode"] == "2N"


def test_retrieve_one_entity_and_not_found(api_stack: ApiStack, city: dict[str, int]) -> None:
    for form in (quote(BUS, safe=""), BUS, "urn:ngsi-ld:Vehicle:ngsi-gw2:bus:7"):
        # Escaped whole, %3A sent as is (decoded by the server), or the colon sent bare.
        response = _get(api_stack, f"/entities/{form}")
        assert response.status_code == 200, (form, response.text)
        assert _valid(response.json())["id"] == BUS
    response = _get(api_stack, f"/entities/{quote(LANE1, safe='')}",
                    params={"attrs": "averageVehicleSpeed,location"})
    body = _valid(response.json())
    assert set(body) == {"id", "type", "averageVehicleSpeed", "location"}
    _problem(_get(api_stack, "/entities/urn:ngsi-ld:Vehicle:nope:nothing"), 404,
             "ResourceNotFound")
    _problem(_get(api_stack, f"/entities/{quote(AQ, safe='')}", params={"type": "Vehicle"}),
             404, "ResourceNotFound")
    _problem(_get(api_stack, f"/entities/{quote(AQ, safe='')}", params={"attrs": "speed"}),
             404, "ResourceNotFound")
    _problem(_get(api_stack, "/entities/not a uri"), 400, "BadRequestData")


def test_filters_type_id_pattern_attrs_q_geo(api_stack: ApiStack, city: dict[str, int]) -> None:
    assert _ids(api_stack, {"type": "TrafficFlowObserved"}) == {LANE1, LANE2}
    assert _ids(api_stack, {"type": "Vehicle|OffStreetParking"}) == {BUS, PARK}
    assert _ids(api_stack, {"type": "https://smartdatamodels.org/dataModel.Parking/"
                                     "OffStreetParking"}) == {PARK}
    assert _ids(api_stack, {"type": "NoSuchType"}) == set()
    assert _ids(api_stack, {"id": f"{AQ},{BUS},urn:ngsi-ld:Vehicle:x:y"}) == {AQ, BUS}
    assert _ids(api_stack, {"id": f"{AQ},{BUS}", "type": "Vehicle"}) == {BUS}
    assert _ids(api_stack, {"idPattern": r"^urn:ngsi-ld:TrafficFlowObserved:.*lane=2$"}) == {
        LANE2}
    with_speed = _entities(api_stack, {"attrs": "speed,averageVehicleSpeed"})
    assert {e["id"] for e in with_speed} == {LANE1, LANE2, BUS}
    assert all(set(e) <= {"id", "type", "speed", "averageVehicleSpeed"} for e in with_speed)

    def q(text: str, **extra: str) -> set[str]:
        return _ids(api_stack, {"q": text, **extra})

    assert q("averageVehicleSpeed>30;averageVehicleSpeed<50") == {LANE1}
    assert q("averageVehicleSpeed<30") == {LANE2}
    assert q("pm25==19") == {AQ}
    assert q("pm25==10..20") == {AQ}
    assert q("pm25!=19") == set()
    assert q('routeId=="31"') == {BUS}
    assert q('areaServed=="centre"') == {AQ, PARK}
    assert q('areaServed=="centre","ring"', type="TrafficFlowObserved") == {LANE1, LANE2}
    assert q("laneId==2") == {LANE2}
    assert q("LAeq>=64.5") == {NOISE}
    assert q("passengerCount") == {BUS}
    assert q("dateObserved>2000-01-01T00:00:00Z", type="AirQualityObserved") == {AQ}
    assert q("occupancy>0.5") == {LANE2, PARK}

    def near(metres: int, lon: float, lat: float, **extra: str) -> set[str]:
        return _ids(api_stack, {"georel": f"near;maxDistance=={metres}", "geometry": "Point",
                                "coordinates": f"[{lon},{lat}]", **extra})

    assert near(100, 10.7522, 59.9139) == {AQ}
    # The bus is 3.4 km from the air station (its live position, not a fixed site).
    assert near(3500, 10.7522, 59.9139, type="Vehicle") == {BUS}
    assert near(3300, 10.7522, 59.9139, type="Vehicle") == set()
    assert BUS in near(100, 10.7, 59.93)
    far = _ids(api_stack, {"georel": "near;minDistance==4000", "geometry": "Point",
                           "coordinates": "[10.7522,59.9139]", "type": ",".join(_TYPES)})
    assert far == {PARK}
    assert near(10**7, 0, 0, geoproperty="observationSpace") == set()


def test_paging_and_count(api_stack: ApiStack, city: dict[str, int]) -> None:
    params = {"type": ",".join(_TYPES), "count": "true"}
    first = _get(api_stack, "/entities", params={**params, "limit": 4})
    assert first.headers["NGSILD-Results-Count"] == str(len(ALL))
    second = _get(api_stack, "/entities", params={**params, "limit": 4, "offset": 4})
    ids = [e["id"] for e in first.json() + second.json()]
    assert ids == sorted(ALL)
    assert len(_entities(api_stack, {"type": ",".join(_TYPES)})) == len(ALL)  # default 20
    only_count = _get(api_stack, "/entities", params={**params, "limit": 0})
    assert only_count.json() == []
    assert only_count.headers["NGSILD-Results-Count"] == str(len(ALL))
    assert "NGSILD-Results-Count" not in _get(api_stack, "/entities",
                                              params={"type": "Vehicle"}).headers
    _problem(_get(api_stack, "/entities", params={"type": "Vehicle", "limit": 0}), 400,
             "BadRequestData")
    _problem(_get(api_stack, "/entities", params={"type": "Vehicle", "limit": 1001}), 400,
             "BadRequestData")


def test_key_values(api_stack: ApiStack, city: dict[str, int]) -> None:
    for option in ({"options": "keyValues"}, {"options": "simplified"},
                   {"format": "keyValues"}):
        (bus,) = _get(api_stack, "/entities", params={"type": "Vehicle", **option}).json()
        assert bus == {"id": BUS, "type": "Vehicle", "speed": 31.0, "heading": 270.0,
                       "routeId": "31", "passengerCount": 12,
                       "location": {"type": "Point", "coordinates": [10.7, 59.93]}}
    aq = _get(api_stack, f"/entities/{quote(AQ, safe='')}",
              params={"options": "keyValues", "attrs": "pm25,areaServed"}).json()
    assert aq == {"id": AQ, "type": "AirQualityObserved", "pm25": 19.0, "areaServed": "centre"}
    _problem(_get(api_stack, "/entities", params={"type": "Vehicle",
                                                  "options": "keyValues,normalized"}),
             400, "BadRequestData")
    _problem(_get(api_stack, "/entities", params={"type": "Vehicle", "options": "concise"}),
             422, "OperationNotSupported")


def test_json_has_a_link_header_and_ld_json_an_inline_context(
    api_stack: ApiStack, city: dict[str, int]
) -> None:
    plain = _get(api_stack, "/entities", params={"type": "Vehicle"})
    assert plain.headers["content-type"] == "application/json"
    link = plain.headers["link"]
    match = re.fullmatch(
        r'<(?P<url>[^>]+)>; rel="http://www\.w3\.org/ns/json-ld#context"; '
        r'type="application/ld\+json"', link)
    assert match, link
    assert "@context" not in plain.json()[0]
    # The context is served by the API itself, without a key (JSON-LD processors send none).
    context = api_stack.client(None).get(match["url"])
    assert context.status_code == 200
    assert context.headers["content-type"] == LD
    terms, core = context.json()["@context"]
    assert core.startswith("https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context")
    assert terms["pm25"] == "https://smartdatamodels.org/dataModel.Environment/pm25"
    assert terms["Vehicle"] == "https://smartdatamodels.org/dataModel.Transportation/Vehicle"

    ld = _get(api_stack, "/entities", params={"type": "Vehicle"}, headers={"Accept": LD})
    assert ld.headers["content-type"] == LD
    assert "link" not in ld.headers
    assert [e["@context"] for e in ld.json()] == [match["url"]]
    one = _get(api_stack, f"/entities/{quote(BUS, safe='')}", headers={"Accept": LD}).json()
    assert _valid(one)["@context"] == match["url"]
    for accept, media in (("application/ld+json;q=0.5, application/json", "application/json"),
                          ("application/json;q=0.1, application/ld+json", LD),
                          ("*/*", "application/json"), ("application/*", "application/json")):
        got = _get(api_stack, "/entities", params={"type": "Vehicle"},
                   headers={"Accept": accept})
        assert got.headers["content-type"] == media, accept
    for accept in ("text/html", "application/geo+json", "application/json;q=0"):
        _problem(_get(api_stack, "/entities", params={"type": "Vehicle"},
                      headers={"Accept": accept}), 406, "InvalidRequest")


def test_errors_are_ngsi_ld_problem_details(api_stack: ApiStack, city: dict[str, int]) -> None:
    def bad(params: dict[str, str], status: int, error: str) -> None:
        _problem(_get(api_stack, "/entities", params=params), status, error)

    bad({}, 400, "BadRequestData")
    bad({"q": "speed>"}, 400, "BadRequestData")
    bad({"q": "speed>fast"}, 400, "BadRequestData")
    bad({"q": ">3"}, 400, "BadRequestData")
    bad({"q": 'routeId=="31'}, 400, "BadRequestData")
    bad({"q": "speed>3|speed<1"}, 422, "OperationNotSupported")
    bad({"q": "(speed>3)"}, 422, "OperationNotSupported")
    bad({"q": 'routeId~="3.*"'}, 422, "OperationNotSupported")
    bad({"q": "speed.observedAt>2020-01-01T00:00:00Z"}, 422, "OperationNotSupported")
    bad({"georel": "within", "geometry": "Polygon", "coordinates": "[]"}, 422,
        "OperationNotSupported")
    bad({"georel": "near;maxDistance==10", "geometry": "Point"}, 400, "BadRequestData")
    bad({"georel": "near;maxDistance==10", "geometry": "Point", "coordinates": "[200,0]"},
        400, "BadRequestData")
    bad({"georel": "close", "geometry": "Point", "coordinates": "[1,1]"}, 400,
        "BadRequestData")
    bad({"type": "Vehicle", "limit": "many"}, 400, "BadRequestData")
    bad({"type": "Vehicle", "count": "perhaps"}, 400, "BadRequestData")
    bad({"type": "Vehicle", "bogus": "1"}, 400, "BadRequestData")
    bad({"type": "Vehicle", "csf": "x"}, 422, "OperationNotSupported")
    bad({"id": "not a uri"}, 400, "BadRequestData")
    bad({"idPattern": "("}, 400, "BadRequestData")
    # RE2 (linear time) refuses what needs backtracking; (a+)+$ is fine there (hostile
    # patterns against long ids: tests/adversarial/test_api_hostile.py).
    bad({"idPattern": r"(a)\1"}, 400, "BadRequestData")
    bad({"idPattern": "(?=urn)"}, 400, "BadRequestData")
    bad({"idPattern": "x" * 257}, 400, "BadRequestData")
    # Authentication stays the platform's: same keys, 401 without one.
    response = _get(api_stack, "/entities", role=None, params={"type": "Vehicle"})
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"


def test_types_and_attributes(api_stack: ApiStack, city: dict[str, int]) -> None:
    types = _get(api_stack, "/types").json()
    assert types["type"] == "EntityTypeList"
    assert URN.fullmatch(types["id"])
    assert set(_TYPES) <= set(types["typeList"])
    detailed = {t["typeName"]: t for t in _get(api_stack, "/types",
                                               params={"details": "true"}).json()}
    assert {"speed", "location", "routeId"} <= set(detailed["Vehicle"]["attributeNames"])
    info = _get(api_stack, "/types/TrafficFlowObserved").json()
    assert info["type"] == "EntityTypeInfo"
    assert info["entityCount"] == 2
    names = {a["attributeName"]: a for a in info["attributeDetails"]}
    assert names["location"]["attributeTypes"] == ["GeoProperty"]
    assert names["laneId"]["attributeTypes"] == ["Property"]
    _problem(_get(api_stack, "/types/NoSuchType"), 404, "ResourceNotFound")
    attributes = _get(api_stack, "/attributes").json()
    assert attributes["type"] == "AttributeList"
    assert {"pm25", "speed", "location", "areaServed"} <= set(attributes["attributeList"])
    occupancy = _get(api_stack, "/attributes/occupancy").json()
    assert occupancy["attributeCount"] == 3
    assert occupancy["typeNames"] == ["OffStreetParking", "TrafficFlowObserved"]
    _problem(_get(api_stack, "/attributes/nothing"), 404, "ResourceNotFound")


def test_temporal_representation_from_influxdb(api_stack: ApiStack, city: dict[str, int]) -> None:
    now = city[AQ]
    path = f"/temporal/entities/{quote(AQ, safe='')}"
    body = _get(api_stack, path, params={"attrs": "pm25"}).json()
    assert body["id"] == AQ
    assert set(body) == {"id", "type", "pm25"}
    pm25 = body["pm25"]
    assert [i["value"] for i in pm25] == [10.0 + i for i in range(10)]
    assert [i["observedAt"] for i in pm25] == [iso(now - (9 - i) * _MIN) for i in range(10)]
    assert all(i["type"] == "Property" and i["unitCode"] == "GQ" for i in pm25)

    last = _get(api_stack, path, params={"attrs": "pm25", "lastN": 3}).json()["pm25"]
    assert [i["value"] for i in last] == [17.0, 18.0, 19.0]
    between = _get(api_stack, path, params={
        "attrs": "pm25", "timerel": "between", "timeAt": iso(now - 5 * _MIN),
        "endTimeAt": iso(now - 2 * _MIN)}).json()["pm25"]
    assert [i["value"] for i in between] == [14.0, 15.0, 16.0]
    before = _get(api_stack, path, params={"attrs": "no2", "timerel": "before",
                                           "timeAt": iso(now - 7 * _MIN)}).json()["no2"]
    assert len(before) == 2
    simple = _get(api_stack, path, params={"attrs": "pm25", "lastN": 2,
                                           "options": "temporalValues"}).json()["pm25"]
    assert simple == {"type": "Property", "unitCode": "GQ",
                      "values": [[18.0, iso(now - _MIN)], [19.0, iso(now)]]}

    _problem(_get(api_stack, path, params={"timerel": "between", "timeAt": iso(now)}), 400,
             "BadRequestData")
    _problem(_get(api_stack, path, params={"timerel": "after"}), 400, "BadRequestData")
    _problem(_get(api_stack, path, params={"options": "aggregatedValues"}), 422,
             "OperationNotSupported")
    _problem(_get(api_stack, "/temporal/entities/urn:ngsi-ld:Vehicle:a:b"), 404,
             "ResourceNotFound")


# Pure functions: no input gets anything but a result or an NGSI-LD error.

_ID = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,20}", fullmatch=True)


@given(gateway=_ID, device=_ID,
       tags=st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True),
                            st.text(min_size=1, max_size=12), max_size=2))
@settings(max_examples=200, deadline=None)
def test_entity_ids_are_urns_and_parse_back(gateway: str, device: str,
                                            tags: dict[str, str]) -> None:
    eid = ngsild.entity_id("TrafficFlowObserved", gateway, device, tags)
    assert URN.fullmatch(eid), eid
    ref = ngsild.EntityRef("TrafficFlowObserved", gateway, device, tuple(sorted(tags.items())))
    assert ngsild.parse_entity_id(eid) == [ref]
    # With the %3A decoded (as a URL path delivers it), the true split is among the candidates.
    assert ref in ngsild.parse_entity_id(eid.replace("%3A", ":"))


@given(st.text(max_size=80))
@settings(max_examples=500, deadline=None)
def test_q_accept_and_georel_parsers_answer_or_refuse_cleanly(text: str) -> None:
    for parse in (ngsild_query.parse_q, ngsild.negotiate,
                  lambda t: ngsild_query.parse_georel(t, "Point", "[1,1]"),
                  lambda t: ngsild_query.parse_georel("near;maxDistance==1", "Point", t),
                  ngsild.parse_entity_id, ngsild_http.link_contexts,
                  lambda t: ngsild.Context.choose([t], "http://h/ngsi-ld/v1/context.jsonld")):
        status = 200
        try:
            parse(text)
        except ngsild.LdContextNotAvailable:
            status = 400  # 503 by the spec: a context this server does not use
        except ngsild.NgsiLdError as exc:
            status = exc.status_code
        assert 200 <= status < 500


# Conformance found by driving the API with ngsildclient (issue 18).

CORE = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.7.jsonld"


def _link(url: str) -> dict[str, str]:
    return {"Link": f'<{url}>; rel="http://www.w3.org/ns/json-ld#context"; '
                    'type="application/ld+json"'}


def test_every_error_under_ngsi_ld_is_an_etsi_problem(
    api_stack: ApiStack, city: dict[str, int]
) -> None:
    client = api_stack.client("viewer")
    _problem(client.get(BASE + "/nothing/here"), 404, "ResourceNotFound")
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        for path in ("/entities", "/entities/", f"/entities/{quote(AQ, safe='')}",
                     "/subscriptions"):
            response = client.request(method, BASE + path, json={}, follow_redirects=False)
            body = _problem(response, 405, "OperationNotSupported")
            assert response.headers["allow"] == "GET", (method, path)
            assert body["status"] == 405
    for method in ("GET", "PUT"):
        response = client.request(method, BASE + "/entityOperations/query")
        _problem(response, 405, "OperationNotSupported")
        assert response.headers["allow"] == "POST"
    anonymous = _problem(_get(api_stack, "/entities", role=None, params={"type": "Vehicle"}),
                         401, "InvalidRequest")
    assert anonymous["status"] == 401
    _problem(api_stack.client(None).get(BASE + "/entities",
                                        headers={"X-API-Key": "sck_wrong"}), 401,
             "InvalidRequest")
    _problem(_get(api_stack, "/temporal/entities/x", params={"lastN": "0"}), 400,
             "BadRequestData")
    _problem(_get(api_stack, "/entities", params={"type": "Vehicle"},
                  headers={"NGSILD-Tenant": "other"}), 501, "NoMultiTenantSupport")
    # The platform's own errors keep their types.
    assert api_stack.get("/v1/nothing").json()["type"].startswith("urn:smartcity:problem:")


def test_core_terms_expand_per_the_core_context(api_stack: ApiStack,
                                                city: dict[str, int]) -> None:
    location = "https://uri.etsi.org/ngsi-ld/location"
    attributes = {a["attributeName"]: a for a in _get(api_stack, "/attributes",
                                                      params={"details": "true"}).json()}
    assert attributes["location"]["id"] == location
    assert attributes["pm25"]["id"] == "https://smartdatamodels.org/dataModel.Environment/pm25"
    info = _get(api_stack, "/types/Vehicle").json()
    assert {a["attributeName"]: a["id"] for a in info["attributeDetails"]}["location"] == location
    assert _ids(api_stack, {"attrs": location}) == ALL
    assert _ids(api_stack, {"attrs": "https://uri.etsi.org/ngsi-ld/default-context/location"}) \
        == set()


def test_full_iris_in_type_and_attribute_paths(api_stack: ApiStack,
                                               city: dict[str, int]) -> None:
    vehicle = "https://smartdatamodels.org/dataModel.Transportation/Vehicle"
    for path in (quote(vehicle, safe=""), vehicle):
        response = _get(api_stack, f"/types/{path}")
        assert response.status_code == 200, (path, response.text)
        assert response.json()["typeName"] == "Vehicle"
    occupancy = "https://smartdatamodels.org/dataModel.Transportation/occupancy"
    response = _get(api_stack, f"/attributes/{quote(occupancy, safe='')}")
    assert response.status_code == 200, response.text
    assert response.json()["attributeName"] == "occupancy"
    location = _get(api_stack, "/attributes/" + quote("https://uri.etsi.org/ngsi-ld/location",
                                                      safe="")).json()
    assert location["attributeCount"] == len(ALL)
    _problem(_get(api_stack, "/types/" + quote("https://example.org/Vehicle", safe="")), 404,
             "ResourceNotFound")


def test_the_link_header_context_is_used_or_refused(api_stack: ApiStack,
                                                    city: dict[str, int]) -> None:
    own = _get(api_stack, "/entities", params={"type": "Vehicle"}).headers["link"]
    own_url = own[1:own.index(">")]
    same = _get(api_stack, "/entities", params={"type": "Vehicle"}, headers=_link(own_url))
    assert same.json()[0]["speed"]["value"] == 31.0
    assert same.headers["link"] == own
    # Core context alone: this API's terms are full IRIs, in and out; core terms stay terms.
    core = _get(api_stack, "/entities", headers=_link(CORE),
                params={"type": "https://smartdatamodels.org/dataModel.Transportation/Vehicle"})
    assert core.status_code == 200, core.text
    assert core.headers["link"].startswith(f"<{CORE}>")
    (bus,) = core.json()
    assert bus["type"] == "https://smartdatamodels.org/dataModel.Transportation/Vehicle"
    assert bus["https://smartdatamodels.org/dataModel.Transportation/speed"]["value"] == 31.0
    assert "location" in bus
    assert "speed" not in bus
    # Under the core context "Vehicle" is default-context/Vehicle: not this API's type.
    assert _get(api_stack, "/entities", headers=_link(CORE),
                params={"type": "Vehicle"}).json() == []
    types = _get(api_stack, "/types", headers=_link(CORE)).json()
    assert "https://smartdatamodels.org/dataModel.Transportation/Vehicle" in types["typeList"]
    body = _problem(_get(api_stack, "/entities", params={"type": "Vehicle"},
                         headers=_link("https://example.org/ctx.jsonld")), 503,
                    "LdContextNotAvailable")
    assert "fetches no remote" in body["detail"]
    _problem(_get(api_stack, "/entities", params={"type": "Vehicle"},
                  headers={"Link": "<unterminated"}), 400, "BadRequestData")


def test_entity_paging_links_and_post_query(api_stack: ApiStack, city: dict[str, int]) -> None:
    first = _get(api_stack, "/entities", params={"type": ",".join(_TYPES), "limit": 4})
    assert 'rel="next"' in first.headers["link"]
    nxt = re.search(r'<([^>]+)>; rel="next"', first.headers["link"])
    assert nxt is not None
    second = api_stack.client("viewer").get(nxt.group(1))
    assert [e["id"] for e in first.json() + second.json()] == sorted(ALL)
    client = api_stack.client("viewer")
    post = client.post(BASE + "/entityOperations/query", params={"count": "true"}, json={
        "type": "Query", "entities": [{"type": "TrafficFlowObserved"}],
        "attrs": ["averageVehicleSpeed"], "q": "averageVehicleSpeed<30"})
    assert post.status_code == 200, post.text
    assert [e["id"] for e in post.json()] == [LANE2]
    assert set(post.json()[0]) == {"id", "type", "averageVehicleSpeed"}
    assert post.headers["NGSILD-Results-Count"] == "1"
    geo = client.post(BASE + "/entityOperations/query", json={
        "type": "Query", "geoQ": {"georel": "near;maxDistance==100", "geometry": "Point",
                                  "coordinates": [10.7522, 59.9139]}})
    assert [e["id"] for e in geo.json()] == [AQ]
    inline = client.post(BASE + "/entityOperations/query",
                         headers={"Content-Type": LD},
                         content=b'{"type": "Query", "entities": [{"type": '
                                 b'"https://smartdatamodels.org/dataModel.Parking/'
                                 b'OffStreetParking"}], "@context": "' + CORE.encode() + b'"}')
    assert [e["id"] for e in inline.json()] == [PARK]
    for body, status, error in (
        ({"type": "Subscription"}, 400, "BadRequestData"),
        ({"type": "Query", "temporalQ": {}}, 422, "OperationNotSupported"),
        ({"type": "Query", "entities": [{"id": AQ}]}, 400, "BadRequestData"),
        ({"type": "Query", "entities": [{"type": "Vehicle"}] * 101}, 400, "BadRequestData"),
        ({"type": "Query", "attrs": "speed"}, 400, "BadRequestData"),
        ({"type": "Query", "bogus": 1}, 400, "BadRequestData"),
        ({"type": "Query", "q": "a==1;" * 40 + "a==1"}, 403, "TooComplexQuery"),
    ):
        _problem(client.post(BASE + "/entityOperations/query", json=body), status, error)
    _problem(client.post(BASE + "/entityOperations/query", content=b"{",
                         headers={"Content-Type": "application/json"}), 400, "InvalidRequest")
    _problem(client.post(BASE + "/entityOperations/query", content=b"x" * 40_000,
                         headers={"Content-Type": "application/json"}), 403, "TooComplexQuery")


def test_temporal_query_of_entities(api_stack: ApiStack, city: dict[str, int]) -> None:
    now = city[AQ]
    since = {"timerel": "after", "timeAt": iso(now - 30 * _MIN)}
    body = _get(api_stack, "/temporal/entities",
                params={"type": "AirQualityObserved", "attrs": "pm25", **since}).json()
    assert [e["id"] for e in body] == [AQ]
    assert [i["value"] for i in body[0]["pm25"]] == [10.0 + i for i in range(10)]
    bus = _get(api_stack, "/temporal/entities", params={
        "type": "Vehicle", "attrs": "location", "lastN": 2, **since,
        "options": "temporalValues"}).json()
    assert [p["coordinates"] for p, _t in bus[0]["location"]["values"]] == [
        [10.702, 59.929], [10.7, 59.93]]
    q = _get(api_stack, "/temporal/entities", params={
        "type": "TrafficFlowObserved", "q": "averageVehicleSpeed<30",
        "attrs": "averageVehicleSpeed", **since}).json()
    assert [e["id"] for e in q] == [LANE2]
    paged = _get(api_stack, "/temporal/entities", params={
        "type": "TrafficFlowObserved", "limit": 1, "count": "true", **since})
    assert paged.headers["NGSILD-Results-Count"] == "2"
    assert 'rel="next"' in paged.headers["link"]
    between = _get(api_stack, "/temporal/entities", params={
        "id": AQ, "attrs": "pm25", "timerel": "between", "timeAt": iso(now - 5 * _MIN),
        "endTimeAt": iso(now - 2 * _MIN)}).json()
    assert [i["value"] for i in between[0]["pm25"]] == [14.0, 15.0, 16.0]
    for params, status, error in (
        ({"type": "Vehicle"}, 400, "BadRequestData"),
        ({"timerel": "after", "timeAt": iso(now)}, 400, "BadRequestData"),
        ({"type": "Vehicle", "pageSize": 10, **since}, 400, "BadRequestData"),
        ({"type": "Vehicle", "limit": 101, **since}, 400, "BadRequestData"),
        ({"type": "Vehicle", "aggrMethods": "sum", **since}, 422, "OperationNotSupported"),
    ):
        _problem(_get(api_stack, "/temporal/entities", params=params), status, error)
