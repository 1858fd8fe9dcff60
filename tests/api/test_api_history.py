"""History through the real ingest into InfluxDB and out through InfluxQL; hostile input."""

from __future__ import annotations

import datetime as dt
import time
import uuid

import numpy as np
import pytest
from api_helpers import ApiStack, Publisher, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.storage import quote_string
from ingest import InfluxConfig, IngestConfig, MqttConfig, WorkerThread
from telemetry import Reading

pytestmark = pytest.mark.integration

_MIN = 60 * 10**9
# Two hours of 1-minute readings, starting on an hour boundary a day ago.
_START = (time.time_ns() // (3600 * 10**9) - 24) * 3600 * 10**9
_N = 120


@pytest.fixture(scope="module")
def history_data(api_stack: ApiStack) -> np.ndarray:
    """Publish through the broker and the real ingest; return the values of hist-1."""
    rng = np.random.default_rng(7)
    values = rng.normal(40, 10, _N).round(3)
    other = rng.normal(500, 50, _N)
    config = IngestConfig(
        mqtt=MqttConfig(host=api_stack.mosquitto.host, port=api_stack.mosquitto.port,
                        topic_root=api_stack.root, client_id=f"ingest-{uuid.uuid4().hex[:6]}",
                        group=f"g{uuid.uuid4().hex[:6]}"),
        influx=InfluxConfig(url=api_stack.influxd.url, database=api_stack.database),
    )
    publisher = Publisher(api_stack.mosquitto, api_stack.root)
    try:
        with WorkerThread(config):
            readings = [
                Reading(device=dev, measurement="AirQualityObserved", ts=_START + i * _MIN,
                        fields={"pm25": float(v)})
                for i in range(_N)
                for dev, v in (("hist-1", values[i]), ("hist-2", other[i]))
            ]
            publisher.readings("hist-gw", readings)
            wait_until(
                lambda: api_stack.influxd.count(api_stack.database, "AirQualityObserved", "pm25")
                == 2 * _N, timeout=20,
            )
    finally:
        publisher.close()
    return values


def _iso(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize("aggregate", ["mean", "min", "max", "sum", "count", "last"])
def test_window_aggregates_equal_numpy(
    api_stack: ApiStack, history_data: np.ndarray, aggregate: str
) -> None:
    response = api_stack.get("/v1/history", params={
        "device": "hist-1", "gateway": "hist-gw", "measurement": "AirQualityObserved",
        "field": "pm25", "start": _iso(_START), "end": _iso(_START + _N * _MIN),
        "window": "5m", "aggregate": aggregate,
    })
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["unit"] == "ug/m3"
    windows = history_data.reshape(-1, 5)
    expected = {
        "mean": windows.mean(axis=1), "min": windows.min(axis=1), "max": windows.max(axis=1),
        "sum": windows.sum(axis=1), "count": np.full(len(windows), 5),
        "last": windows[:, -1],
    }[aggregate]
    got = np.array([p["value"] for p in body["points"]], dtype=float)
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    assert body["points"][0]["time"].startswith(_iso(_START)[:16])


def test_raw_points_and_whole_range_aggregate(
    api_stack: ApiStack, history_data: np.ndarray
) -> None:
    params = {"device": "hist-1", "measurement": "AirQualityObserved", "field": "pm25",
              "start": _iso(_START), "end": _iso(_START + _N * _MIN)}
    raw = api_stack.get("/v1/history", params=params).json()
    np.testing.assert_allclose([p["value"] for p in raw["points"]], history_data)
    total = api_stack.get("/v1/history", params={**params, "aggregate": "mean"}).json()
    assert total["points"][0]["value"] == pytest.approx(history_data.mean())


def test_point_limits_answer_a_clear_400(api_stack: ApiStack, history_data: np.ndarray) -> None:
    base = {"device": "hist-1", "measurement": "AirQualityObserved", "field": "pm25"}
    response = api_stack.get("/v1/history", params={
        **base, "start": "2024-01-01T00:00:00Z", "end": "2025-01-01T00:00:00Z", "window": "1s",
    })
    assert response.status_code == 400
    problem = response.json()
    assert response.headers["content-type"] == "application/problem+json"
    assert problem["parameter"] == "window"
    assert "limit" in problem["detail"]
    reverse = api_stack.get("/v1/history", params={
        **base, "start": "2024-01-02T00:00:00Z", "end": "2024-01-01T00:00:00Z"})
    assert reverse.status_code == 400
    assert reverse.json()["parameter"] == "end"


def test_raw_point_limit(api_stack: ApiStack, history_data: np.ndarray) -> None:
    services = api_stack.server.services
    original = services.settings
    services.settings = original.model_copy(update={"max_points": 50})
    try:
        response = api_stack.get("/v1/history", params={
            "device": "hist-1", "measurement": "AirQualityObserved", "field": "pm25",
            "start": _iso(_START), "end": _iso(_START + _N * _MIN)})
    finally:
        services.settings = original
    assert response.status_code == 400
    assert response.json()["parameter"] == "window"


HOSTILE = [
    "'", '"', "\\", "x' OR '1'='1", 'x" OR "1"="1', "/.*/", "=~ /.*/", "x'; DROP DATABASE x; '",
    "; DROP DATABASE _internal", '"; DROP MEASUREMENT "AirQualityObserved', "x\nDROP SERIES",
    "SELECT * FROM /.*/", "1h; DELETE FROM AirQualityObserved", "mean) FROM x; --",
    "hist-1' OR device =~ /.*/ --", "$(id)", "%27", "", " ", "hist-1 ", "ünïcode", "x" * 300,
    "now() - 100w", "1970-01-01T00:00:00Z' OR 1=1",
]
PARAMS = ["device", "gateway", "measurement", "field", "window", "aggregate", "start", "end",
          "lane"]


def _db_state(api_stack: ApiStack) -> tuple[object, ...]:
    influxd, db = api_stack.influxd, api_stack.database
    return (
        influxd.query("SHOW DATABASES")["results"][0]["series"][0]["values"],
        influxd.query("SHOW MEASUREMENTS", db=db)["results"][0]["series"][0]["values"],
        influxd.query("SHOW SERIES", db=db)["results"][0]["series"][0]["values"],
        influxd.count(db, "AirQualityObserved", "pm25"),
    )


def test_hostile_parameters_change_nothing(api_stack: ApiStack, history_data: np.ndarray) -> None:
    before = _db_state(api_stack)
    good = {"device": "hist-1", "measurement": "AirQualityObserved", "field": "pm25",
            "window": "5m", "aggregate": "mean", "start": _iso(_START),
            "end": _iso(_START + _N * _MIN)}
    reference = api_stack.get("/v1/history", params=good).json()["points"]
    for name in PARAMS:
        for value in HOSTILE:
            response = api_stack.get("/v1/history", params={**good, name: value})
            assert response.status_code in (400, 200), (name, value, response.text)
            if response.status_code == 400:
                assert response.json()["parameter"] == name, (name, value)
            else:  # only values that are harmless as given, e.g. ISO-ish times
                assert response.json()["points"] in (reference, []), (name, value)
        for path in ("/v1/resources/air/history", "/v1/devices", "/v1/live"):
            for value in HOSTILE[:8]:
                response = api_stack.get(path, params={"field": "pm25", "area": value})
                assert response.status_code == 400, (path, value)
    assert _db_state(api_stack) == before
    assert api_stack.get("/v1/history", params=good).json()["points"] == reference


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1,
               max_size=40).filter(lambda s: "\\" not in s and s.strip() == s))
def test_quoted_strings_stay_literals_in_real_influxql(api_stack: ApiStack, value: str) -> None:
    """Whatever a string holds, ``quote_string`` makes InfluxDB compare it as one literal."""
    influxd, db = api_stack.influxd, api_stack.database
    escaped = value.replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")
    influxd.write(db, f"QuoteProbe,device={escaped} v=1 {_START}".encode())
    answer = influxd.query(
        f'SELECT count("v") FROM "QuoteProbe" WHERE "device" = {quote_string(value)}', db=db
    )
    series = answer["results"][0].get("series")
    assert series is not None
    assert series[0]["values"][0][1] == 1
