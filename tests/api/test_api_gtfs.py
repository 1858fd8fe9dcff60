"""GTFS against the real stack: a simulated city's buses publish through mosquitto to a real
API (and through ingest into influxd) that reads the city's own GTFS timetable; its
TripUpdates (parsed by the official gtfs-realtime-bindings, in .venv and in .venv-clients),
its schedule adherence and its static feed are checked against the simulator's recorded
delays (the ground truth).

Stated tolerance: a delay is within +-30 s of the recorded one while the bus is on its trip
(measured: within half a dwell, 10 s, since a bus dwelling at a stop could be anywhere in its
dwell). While a bus waits at its terminus for a late departure the delay is a lower bound
(it cannot be known before the bus leaves); those readings are checked as such.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import subprocess
import time
import uuid
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from api_helpers import ApiStack, start_stack, wait_until
from google.transit import gtfs_realtime_pb2

from ingest import InfluxConfig, IngestConfig, MqttConfig, WorkerThread
from simulators import City, FleetConfig, GatewayFleet, Scenario, scenario_from_dict
from simulators._timetable import Timetable, write_gtfs
from smartcity._localstack import Influxd, Mosquitto

pytestmark = pytest.mark.integration

CLIENTS_PYTHON = Path(__file__).resolve().parents[2] / ".venv-clients" / "bin" / "python"
CLIENT = Path(__file__).parent / "clients" / "gtfs_rt_client.py"

TOLERANCE_S = 30
LATE_S = 180
START = "2024-11-27T07:00:00+01:00"  # a Wednesday, morning peak
TICKS = 240  # 40 simulated minutes
SPEED = 100.0  # a 10 s tick every 0.1 s of wall time


def _scenario(root: str) -> Scenario:
    return scenario_from_dict({
        "name": "gtfs-live", "seed": 23, "start": START, "tick_s": 10, "speed": SPEED,
        "topic_root": root,
        "city": {"grid": {"rows": 6, "cols": 6, "spacing_m": 350, "arterial_every": 2},
                 "bus_routes": 2, "timetable": {"disrupted_share": 0.3}},
        "intervals": {"bus": 10},
        "gateways": [{"prefix": "bus", "count": 8, "devices": {"bus": 1}}],
    })  # fmt: skip


@dataclass
class LiveCity:
    stack: ApiStack
    timetable: Timetable
    feed_path: Path
    #: TripUpdate entities seen while the city ran: (vehicle id, timestamp) -> entity fields.
    seen: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    adherence: list[dict[str, Any]] = field(default_factory=list)


def _trip_updates(stack: ApiStack) -> gtfs_realtime_pb2.FeedMessage:
    response = stack.get("/v1/gtfs-rt/trip-updates")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-protobuf"
    feed = gtfs_realtime_pb2.FeedMessage()
    feed.ParseFromString(response.content)
    return feed


@pytest.fixture(scope="module")
def live_city(
    mosquitto: Mosquitto, influxd: Influxd, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveCity]:
    root = f"t{uuid.uuid4().hex[:12]}"
    database = f"api_{uuid.uuid4().hex[:12]}"
    influxd.create_database(database)
    tmp = tmp_path_factory.mktemp("gtfs")
    sc = _scenario(root)
    city = City(sc)
    assert city.timetable is not None
    day = dt.date(2024, 11, 27)
    feed_path = tmp / "gtfs.zip"
    write_gtfs(city.timetable, feed_path, start=day - dt.timedelta(days=7),
               end=day + dt.timedelta(days=30))
    stack = start_stack(mosquitto, influxd, root=root, database=database,
                        db_path=tmp / "api.sqlite3", gtfs_static_path=feed_path,
                        late_threshold_s=LATE_S)
    ingest = IngestConfig(
        mqtt=MqttConfig(host=mosquitto.host, port=mosquitto.port, topic_root=root,
                        client_id=f"ingest-{uuid.uuid4().hex[:6]}",
                        group=f"g{uuid.uuid4().hex[:6]}"),
        influx=InfluxConfig(url=influxd.url, database=database),
    )
    fleet = GatewayFleet(FleetConfig(scenario=sc, host=mosquitto.host, port=mosquitto.port,
                                     topic_root=root, client_prefix=f"sim{uuid.uuid4().hex[:6]}"))
    live = LiveCity(stack, city.timetable, feed_path)
    try:
        with WorkerThread(ingest), ThreadPoolExecutor(1, "gtfs-fleet") as pool:
            running = pool.submit(fleet.run, ticks=TICKS)
            while not running.done():
                for e in _trip_updates(stack).entity:
                    tu = e.trip_update
                    live.seen[(e.id, tu.timestamp)] = {
                        "trip_id": tu.trip.trip_id, "start_date": tu.trip.start_date,
                        "route_id": tu.trip.route_id, "delay": tu.delay,
                        "stops": [(u.stop_sequence, u.arrival.delay, u.departure.delay,
                                   u.arrival.time, u.departure.time)
                                  for u in tu.stop_time_update],
                    }
                body = stack.get("/v1/transport/adherence").json()
                live.adherence.extend(body["items"])
                time.sleep(0.2)
            running.result()  # the fleet's own error, if any
            wait_until(lambda: influxd.count(database, "Vehicle", "latitude") >= 8 * TICKS,
                       timeout=30)
        yield live
    finally:
        stack.close()
        influxd.drop_database(database)


def _truth(live: LiveCity, vehicle_id: str, ts_s: int) -> Any:
    device = vehicle_id.split(":", 1)[1]
    return live.timetable.state(live.timetable.bus_ids.index(device), ts_s)


def test_trip_updates_match_the_recorded_delays(live_city: LiveCity) -> None:
    on_trip: list[int] = []
    waiting = late = 0
    for (vehicle, ts), tu in live_city.seen.items():
        truth = _truth(live_city, vehicle, ts)
        assert tu["trip_id"] == truth.trip.trip_id
        assert tu["start_date"] == truth.trip.day.strftime("%Y%m%d")
        assert tu["route_id"] == live_city.timetable.routes[truth.trip.route].name
        # The delay holds for every stop still to come, and stop times are ordered.
        assert {s[1] for s in tu["stops"] if s[1]} | {s[2] for s in tu["stops"] if s[2]} \
            <= {tu["delay"]}
        times = [t for s in tu["stops"] for t in (s[3], s[4]) if t]
        assert times == sorted(times)
        if truth.phase == "layover":
            assert 0 <= tu["delay"] <= truth.delay_s + 1
            waiting += 1
            continue
        on_trip.append(tu["delay"] - truth.delay_s)
        late += truth.delay_s > LATE_S
    print(f"trip updates: {len(on_trip)} on trip, {waiting} waiting, {late} late; "
          f"max |error| {max(abs(e) for e in on_trip)} s")
    assert len(on_trip) > 60
    assert max(abs(e) for e in on_trip) <= TOLERANCE_S
    assert late > 5


def test_adherence_flags_late_and_bunched_buses(live_city: LiveCity) -> None:
    rows = live_city.adherence
    assert rows
    keys = {"id", "routeId", "tripId", "delay_s", "headway_s", "scheduledHeadway_s", "late",
            "bunched", "status", "startDate", "nextStopId", "time"}
    assert keys <= set(rows[0])
    late = bunched = 0
    for row in rows:
        assert row["status"] in ("in_transit", "at_stop", "at_terminus")
        assert row["late"] is (row["delay_s"] > LATE_S)
        late += row["late"]
        if row["headway_s"] is not None:
            assert row["bunched"] is (row["headway_s"] < 0.25 * row["scheduledHeadway_s"])
            bunched += row["bunched"]
    assert late > 10
    assert bunched > 0
    stack = live_city.stack
    body = stack.get("/v1/transport/adherence", params={"late": "true", "limit": 2}).json()
    assert all(r["late"] for r in body["items"])
    assert body["summary"]["late"] == body["total"] == body["summary"]["vehicles"]
    assert body["lateThreshold_s"] == LATE_S
    assert body["bunchedRatio"] == 0.25
    body = stack.get("/v1/transport/adherence", params={"route": "R1"}).json()
    assert {r["routeId"] for r in body["items"]} == {"R1"}
    for params in ({"late": "maybe"}, {"route": "R1;drop"}, {"limit": 0}, {"offset": -1},
                   {"bunched": "2"}):
        bad = stack.get("/v1/transport/adherence", params=params)
        assert bad.status_code in (400, 422), (params, bad.status_code)
        assert bad.headers["content-type"].startswith("application/problem+json")


def test_the_static_feed_is_served_to_keys_only(live_city: LiveCity) -> None:
    stack = live_city.stack
    assert stack.get("/v1/transport/gtfs/static.zip", role=None).status_code == 401
    assert stack.get("/v1/gtfs-rt/trip-updates", role=None).status_code == 401
    assert stack.get("/v1/transport/adherence", role=None).status_code == 401
    response = stack.get("/v1/transport/gtfs/static.zip")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/zip"
    assert response.content == live_city.feed_path.read_bytes()
    with zipfile.ZipFile(io.BytesIO(response.content)) as zf:
        assert {"agency.txt", "stops.txt", "routes.txt", "trips.txt", "stop_times.txt",
                "calendar.txt"} <= set(zf.namelist())
    as_json = stack.get("/v1/gtfs-rt/trip-updates.json").json()
    assert as_json["header"]["gtfs_realtime_version"] == "2.0"
    assert len(as_json["entity"]) == 8


def test_metrics_count_vehicles_by_adherence(live_city: LiveCity) -> None:
    text = live_city.stack.get("/metrics").text
    lines = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
             if line.startswith("smartcity_api_schedule_") or line.startswith("smartcity_api_gtfs")}
    body = live_city.stack.get("/v1/transport/adherence").json()["summary"]
    statuses = [v for k, v in lines.items() if k.startswith("smartcity_api_schedule_vehicles{")]
    assert sum(statuses) == body["vehicles"] == 8
    assert lines["smartcity_api_schedule_late_vehicles"] == body["late"]
    assert lines["smartcity_api_schedule_bunched_vehicles"] == body["bunched"]
    assert lines["smartcity_api_gtfs_trips"] > 100


def test_the_official_bindings_in_the_clients_venv_read_the_feed(live_city: LiveCity) -> None:
    if not CLIENTS_PYTHON.exists():
        pytest.fail(f"{CLIENTS_PYTHON} is missing: made by 'make setup' (requirements/clients.txt)")
    args = {"url": live_city.stack.url, "key": live_city.stack.keys["viewer"]}
    proc = subprocess.run(
        [str(CLIENTS_PYTHON), str(CLIENT), json.dumps(args)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(out)[:1500])
    assert out["version"] == "2.0"
    assert len(out["trip_updates"]) == 8
    assert sorted(t["vehicle"] for t in out["trip_updates"]) == out["vehicles"]
    for tu in out["trip_updates"]:
        truth = _truth(live_city, tu["vehicle"], tu["timestamp"])
        assert tu["trip_id"] == truth.trip.trip_id
        if truth.phase != "layover":
            assert abs(tu["delay"] - truth.delay_s) <= TOLERANCE_S
        assert tu["stops"]


def test_without_a_feed_the_timetable_endpoints_say_so(api_stack: ApiStack) -> None:
    for path in ("/v1/transport/adherence", "/v1/gtfs-rt/trip-updates",
                 "/v1/transport/gtfs/static.zip"):
        response = api_stack.get(path)
        assert response.status_code == 404
        assert "gtfs_static_path" in response.json()["detail"]
