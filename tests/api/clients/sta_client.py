"""Drive the SensorThings API with frost-sta-client (run by .venv-clients/bin/python).

Input: one JSON argument {"url", "key", "thing", "datastream", "since", "until"}. Output: one
JSON object on stdout with what each call returned (and the error of refused calls).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import frost_sta_client as fsc
from frost_sta_client.service.auth_handler import AuthHandler
from requests.auth import AuthBase


class _Key(AuthBase):
    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, request: Any) -> Any:
        request.headers["X-API-Key"] = self.key
        return request


class ApiKeyAuth(AuthHandler):
    """frost-sta-client knows HTTP Basic only; the API takes its key as X-API-Key."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key

    def add_auth_header(self) -> AuthBase:
        return _Key(self.key)


def main() -> None:
    args = json.loads(sys.argv[1])
    service = fsc.SensorThingsService(args["url"], auth_handler=ApiKeyAuth(args["key"]))
    out: dict[str, Any] = {}
    things = service.things().query().expand("Datastreams($select=name,unitOfMeasurement)") \
        .list()
    out["things"] = {t.id: sorted(d.name for d in t.datastreams) for t in things}
    thing = service.things().find(args["thing"])
    out["thing"] = {"id": thing.id, "name": thing.name, "properties": thing.properties}
    out["thing_datastreams"] = sorted(d.id for d in thing.get_datastreams().query().list())
    out["locations"] = [{"id": loc.id, "location": loc.location.__geo_interface__
                         if hasattr(loc.location, "__geo_interface__") else str(loc.location)}
                        for loc in thing.get_locations().query().list()]
    ds = service.datastreams().find(args["datastream"])
    out["datastream"] = {"id": ds.id, "name": ds.name,
                         "unit": ds.unit_of_measurement.symbol if ds.unit_of_measurement
                         else None}
    # Page Observations four at a time: the client follows @iot.nextLink.
    pages = ds.get_observations().query().top(4).orderby("phenomenonTime", "ASC").list()
    out["paged"] = [o.result for o in pages]
    first = ds.get_observations().query().top(4).count().list()
    out["first_page"] = {"results": [o.result for o in first.entities],
                         "count": first.count, "next": first.next_link is not None}
    by_time = ds.get_observations().query().filter(
        f"phenomenonTime ge {args['since']} and phenomenonTime lt {args['until']}").list()
    out["by_time"] = [o.result for o in by_time]
    by_value = ds.get_observations().query().filter("result gt 14 and result le 17").list()
    out["by_value"] = [o.result for o in by_value]
    newest = ds.get_observations().query().top(2).orderby("phenomenonTime", "DESC") \
        .expand("Datastream($select=name)").list()
    out["newest"] = [[o.result, o.datastream.name if o.datastream else None]
                     for o in newest.entities]
    try:
        service.things().query().filter("substringof('gw', name)").list()
        out["function"] = None
    except Exception as exc:  # noqa: BLE001 - report what the client raised
        out["function"] = type(exc).__name__
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
