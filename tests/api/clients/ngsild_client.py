"""Drive the NGSI-LD interface with ngsildclient (run by .venv-clients/bin/python).

Input: one JSON argument {"host", "port", "key", "aq", "bus", "since"}. Output: one JSON
object on stdout with what each call returned (and the exception class of refused calls).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from ngsildclient import Client, Entity
from ngsildclient.api.helper.temporal import TemporalQuery
from requests.auth import AuthBase

CORE = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.7.jsonld"


class ApiKey(AuthBase):
    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, request: Any) -> Any:
        request.headers["X-API-Key"] = self.key
        return request


def refused(call: Any) -> dict[str, Any]:
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - report what the client raised, whatever it is
        pd = getattr(exc, "problemdetails", None)
        return {"error": type(exc).__name__,
                "type": getattr(pd, "type", None), "status": getattr(pd, "status", None)}
    return {"error": None}


def main() -> None:
    args = json.loads(sys.argv[1])
    out: dict[str, Any] = {}
    with Client(hostname=args["host"], port=args["port"], custom_auth=ApiKey(args["key"]),
                verbose=False) as client:
        out["types"] = sorted(client.types.list())
        out["count"] = client.count(type="TrafficFlowObserved")
        out["query"] = sorted(e.id for e in client.query(type="TrafficFlowObserved"))
        out["get"] = client.get(args["aq"], asdict=True)
        out["q"] = sorted(e.id for e in client.query(q="averageVehicleSpeed<30"))
        # Under the core context alone, this API's terms are full IRIs.
        out["query_core"] = [e.to_dict() for e in client.entities._query(
            type="https://smartdatamodels.org/dataModel.Transportation/Vehicle", ctx=CORE)]
        out["get_core"] = client.get(args["aq"], ctx=CORE, asdict=True)
        # Geo-query as GET parameters (ngsildclient's query() sends a non-standard geoQ
        # parameter, so through its session), and as a POST Query (its alt query).
        response = client.session.get(
            f"{client.url}/ngsi-ld/v1/entities",
            params={"georel": "near;maxDistance==100", "geometry": "Point",
                    "coordinates": "[10.7,59.93]"},
            headers={"Accept": "application/ld+json", "Content-Type": None})
        out["geo"] = [response.status_code, sorted(e["id"] for e in response.json())]
        out["post_query"] = sorted(e.id for e in client.alt.query({
            "type": "Query", "entities": [{"type": "Vehicle"}],
            "geoQ": {"georel": "near;maxDistance==3500", "geometry": "Point",
                     "coordinates": [10.7522, 59.9139]}}))
        out["post_count"] = client.alt.count({"type": "Query",
                                              "entities": [{"type": "TrafficFlowObserved"}]})
        # Temporal: one entity, then a query over a type.
        out["temporal_get"] = client.temporal.get(args["aq"], attrs=["pm25"])
        out["temporal_query"] = client.temporal.query(
            type="AirQualityObserved", attrs=["pm25"], tq=TemporalQuery().after(args["since"]))
        out["temporal_query_lastn"] = client.temporal.query(
            type="AirQualityObserved", attrs=["pm25"], lastn=3,
            tq=TemporalQuery().after(args["since"]))
        # Refusals arrive as the client's typed NGSI-LD errors (ETSI ProblemDetails).
        out["not_found"] = refused(lambda: client.get("urn:ngsi-ld:Vehicle:nope:nothing"))
        out["bad_q"] = refused(lambda: client.query(q="speed>fast"))
        out["create"] = refused(lambda: client.entities.create(
            Entity("Vehicle", "urn:ngsi-ld:Vehicle:x:y")))
        out["other_context"] = refused(lambda: client.get(
            args["aq"], ctx="https://example.org/context.jsonld"))
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
