"""The standards' own clients against the real API: ngsildclient (NGSI-LD) and
frost-sta-client (OGC SensorThings API).

The clients live in their own locked venv (``.venv-clients``, made by ``make setup``: they
pin libraries the API cannot share); each test runs a script of ``tests/api/clients/`` with
that interpreter, against the API started by ``api_stack`` on real mosquitto and influxd,
and asserts on the JSON it prints. A missing venv fails the test, it never skips.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from api_helpers import ApiStack
from standards_city import AQ, BUS, LANE1, LANE2, MIN, TYPES, load_city

from api._params import iso

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CLIENTS_PYTHON = ROOT / ".venv-clients" / "bin" / "python"
SCRIPTS = Path(__file__).parent / "clients"
ERR = "https://uri.etsi.org/ngsi-ld/errors/"


def run_client(script: str, args: dict[str, Any]) -> dict[str, Any]:
    if not CLIENTS_PYTHON.exists():
        pytest.fail(f"{CLIENTS_PYTHON} is missing: the standards' clients are installed by "
                    "'make setup' (requirements/clients.txt)")
    proc = subprocess.run(
        [str(CLIENTS_PYTHON), str(SCRIPTS / script), json.dumps(args)],
        capture_output=True, text=True, timeout=180, check=False,
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stderr[-4000:]}"
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


@pytest.fixture(scope="module")
def city(api_stack: ApiStack) -> dict[str, int]:
    return load_city(api_stack)


def _address(stack: ApiStack) -> tuple[str, int]:
    split = urlsplit(stack.url)
    assert split.hostname is not None
    assert split.port is not None
    return split.hostname, split.port


def test_ngsildclient_reads_types_counts_queries_entities_and_history(
    api_stack: ApiStack, city: dict[str, int]
) -> None:
    host, port = _address(api_stack)
    now = city[AQ]
    out = run_client("ngsild_client.py", {
        "host": host, "port": port, "key": api_stack.keys["viewer"], "aq": AQ, "bus": BUS,
        "since": iso(now - 30 * MIN),
    })
    assert set(TYPES) <= set(out["types"])
    assert out["count"] == 2
    assert out["query"] == [LANE1, LANE2]
    assert out["get"]["id"] == AQ
    assert out["get"]["pm25"]["value"] == 19.0
    assert out["get"]["@context"].endswith("/ngsi-ld/v1/context.jsonld")
    assert out["q"] == [LANE2]
    # The core context alone: the type IRI selects the bus, terms come back as IRIs.
    (bus,) = out["query_core"]
    assert bus["id"] == BUS
    assert bus["type"] == "https://smartdatamodels.org/dataModel.Transportation/Vehicle"
    assert "https://smartdatamodels.org/dataModel.Transportation/speed" in bus
    assert "location" in bus  # a core term stays a term
    assert out["get_core"]["@context"].startswith("https://uri.etsi.org/ngsi-ld/v1/")
    assert "https://smartdatamodels.org/dataModel.Environment/pm25" in out["get_core"]
    assert out["geo"] == [200, [BUS]]
    assert out["post_query"] == [BUS]
    assert out["post_count"] == 2
    pm25 = out["temporal_get"][0]["pm25"] if isinstance(out["temporal_get"], list) \
        else out["temporal_get"]["pm25"]
    assert [v for v, _t in pm25["values"]] == [10.0 + i for i in range(10)]
    (troe,) = out["temporal_query"]
    assert troe["id"] == AQ
    assert [v for v, _t in troe["pm25"]["values"]] == [10.0 + i for i in range(10)]
    (last,) = out["temporal_query_lastn"]
    assert [v for v, _t in last["pm25"]["values"]] == [17.0, 18.0, 19.0]
    # Refusals are the client's typed errors, from ETSI ProblemDetails (no TypeError).
    assert out["not_found"] == {"error": "NgsiResourceNotFoundError",
                                "type": ERR + "ResourceNotFound", "status": 404}
    assert out["bad_q"]["error"] == "NgsiBadRequestDataError"
    assert out["create"] == {"error": "NgsiOperationNotSupportedError",
                             "type": ERR + "OperationNotSupported", "status": 405}
    assert out["other_context"]["error"] == "NgsiLdContextNotAvailableError"


def test_frost_sta_client_lists_things_expands_pages_and_filters_observations(
    api_stack: ApiStack, city: dict[str, int]
) -> None:
    now = city[AQ]
    out = run_client("sta_client.py", {
        "url": api_stack.url + "/sta/v1.1", "key": api_stack.keys["viewer"],
        "thing": "ngsi-gw1", "datastream": "ngsi-gw1:aq-1:AirQualityObserved.pm25",
        "since": iso(now - 5 * MIN), "until": iso(now - 2 * MIN),
    })
    assert set(out["things"]) == {"ngsi-gw1", "ngsi-gw2"}
    assert "ngsi-gw1/aq-1 AirQualityObserved.pm25" in out["things"]["ngsi-gw1"]
    assert "ngsi-gw2/bus:7 Vehicle.speed" in out["things"]["ngsi-gw2"]
    assert out["thing"]["name"] == "ngsi-gw1"
    assert "ngsi-gw1:loop-3:TrafficFlowObserved.intensity:lane=2" in out["thing_datastreams"]
    assert len(out["locations"]) == 4
    assert out["datastream"]["unit"] == "ug/m3"
    assert out["paged"] == [10.0 + i for i in range(10)]
    assert out["first_page"] == {"results": [10.0, 11.0, 12.0, 13.0], "count": 10,
                                 "next": True}
    assert out["by_time"] == [14.0, 15.0, 16.0]
    assert out["by_value"] == [15.0, 16.0, 17.0]
    assert out["newest"] == [[19.0, "ngsi-gw1/aq-1 AirQualityObserved.pm25"],
                             [18.0, "ngsi-gw1/aq-1 AirQualityObserved.pm25"]]
    assert out["function"] is not None  # refused (501), not ignored
