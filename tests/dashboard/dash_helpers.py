"""A running demo stack for the dashboard tests, and a small crafted city to watch.

::

    CraftedCity (thread) ──┐                       ┌─▶ ingest worker ─▶ influxd
    GatewayFleet (sim) ────┼─▶ mosquitto ──────────┤
    fault: pm25 = 80 ──────┘                       └─▶ API (uvicorn thread) ─▶ Chromium

The crafted city is a square of roads with ``meta.geometry`` (so the map draws polylines),
two buses going round it, two car parks, three air stations and one station whose PM2.5 the
test pushes above the alert threshold. The simulator fleet adds the ``small`` scenario's city
(links known by a point only, as births carry no geometry yet).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from api import ApiError, ApiServer, ApiSettings, Database, MqttSettings
from ingest import InfluxConfig, IngestConfig, MqttConfig, WorkerThread
from simulators import City, FleetConfig, GatewayFleet, export_areas, load_scenario
from simulators._timetable import write_gtfs  # not exported (yet) by simulators
from smartcity._localstack import Influxd, Mosquitto
from telemetry import (
    Batch,
    Birth,
    DeviceInfo,
    Health,
    Location,
    Reading,
    SpoolHealth,
    Topics,
    encode_batch,
    encode_message,
)

T = TypeVar("T")

CENTRE = (59.9139, 10.7522)
CITY_GW = "dash-city"
FAULT_GW = "dash-fault"
HOT_STATION = "aq-hot"
_KINDS = ("loop", "bus", "parking", "air", "noise", "water", "energy")


def wait_until(check: Callable[[], T], timeout: float = 15.0, interval: float = 0.1) -> T:
    """Poll ``check`` until it returns something truthy; fail with its last value."""
    deadline = time.monotonic() + timeout
    value = check()
    while not value:
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {value!r})")
        time.sleep(interval)
        value = check()
    return value


def _offset(dlat_m: float, dlon_m: float) -> tuple[float, float]:
    lat = CENTRE[0] + dlat_m / 111_320
    lon = CENTRE[1] + dlon_m / (111_320 * math.cos(math.radians(CENTRE[0])))
    return round(lat, 6), round(lon, 6)


# Corners of a 600 m square south-west of the simulated city's centre.
_SW, _SE, _NE, _NW = (_offset(-900, -900), _offset(-900, -300), _offset(-300, -300),
                      _offset(-300, -900))
_MID_W, _MID_E = _offset(-600, -900), _offset(-600, -300)
#: link id -> (geometry, mean speed km/h against a free flow of 50: free/moderate/heavy/severe)
LINKS: dict[str, tuple[list[tuple[float, float]], float]] = {
    "link-south": ([_SW, _SE], 46.0),
    "link-east": ([_SE, _NE], 31.0),
    "link-north": ([_NE, _NW], 19.0),
    "link-west": ([_NW, _MID_W, _SW], 8.0),
    "link-cross": ([_MID_W, _MID_E], 40.0),
}
PARKING = {"park-1": (_offset(-750, -600), 400), "park-2": (_offset(-450, -600), 120)}
AIR = {"aq-1": (_offset(-880, -880), 5.0), "aq-2": (_offset(-320, -320), 22.0),
       "aq-3": (_offset(-320, -880), 30.0)}
BUSES = ("bus-a", "bus-b")
_LOOP = [_SW, _SE, _NE, _NW, _SW]


def _along_loop(s: float) -> tuple[float, float, float]:
    """Position and heading at fraction ``s`` (0..1) of the way round the square."""
    s = s % 1.0
    seg = min(int(s * 4), 3)
    f = s * 4 - seg
    (a_lat, a_lon), (b_lat, b_lon) = _LOOP[seg], _LOOP[seg + 1]
    lat, lon = a_lat + (b_lat - a_lat) * f, a_lon + (b_lon - a_lon) * f
    heading = (90.0, 0.0, 270.0, 180.0)[seg]
    return lat, lon, heading


class CraftedCity:
    """Publishes the crafted gateways every ``interval_s`` like edge agents do (QoS 1)."""

    def __init__(self, broker: Mosquitto, root: str, *, interval_s: float = 0.5) -> None:
        self.topics = Topics(root)
        self.interval_s = interval_s
        self.hot_pm25: float | None = None
        self._seq: dict[str, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"dash-city-{uuid.uuid4().hex[:6]}",
                                  protocol=mqtt.MQTTv5)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self._thread = threading.Thread(target=self._run, name="dash.city", daemon=True)

    def births(self) -> None:
        def loc(p: tuple[float, float]) -> Location:
            return Location(lat=p[0], lon=p[1], area="south-west")

        devices = [
            DeviceInfo(id=link, kind="loop-detector", location=loc(geo[len(geo) // 2]),
                       measurements={"TrafficFlowObserved": {"averageVehicleSpeed": "km/h",
                                                             "intensity": "veh/h"}},
                       meta={"geometry": json.dumps(geo), "freeFlowSpeed": "50"})
            for link, (geo, _speed) in LINKS.items()
        ]
        devices += [DeviceInfo(id=b, kind="bus-gps", location=loc(_SW),
                               measurements={"Vehicle": {"speed": "km/h"}}) for b in BUSES]
        devices += [DeviceInfo(id=p, kind="car-park", location=loc(pos),
                               measurements={"OffStreetParking": {"availableSpotNumber": "1"}})
                    for p, (pos, _total) in PARKING.items()]
        devices += [DeviceInfo(id=a, kind="air-quality", location=loc(pos),
                               measurements={"AirQualityObserved": {"pm25": "ug/m3"}})
                    for a, (pos, _pm) in AIR.items()]
        hot = DeviceInfo(id=HOT_STATION, kind="air-quality", location=loc(_offset(-600, -600)),
                         measurements={"AirQualityObserved": {"pm25": "ug/m3"}})
        for gw, devs in ((CITY_GW, devices), (FAULT_GW, [hot])):
            birth = Birth(gw=gw, ts=time.time_ns(), agent="dashboard-test", devices=devs,
                          location=loc(_offset(-600, -600)))
            self.client.publish(self.topics.status(gw), encode_message(birth), qos=1,
                                retain=True).wait_for_publish(5)
        spool = SpoolHealth(batches=3, readings=42, bytes=4096, budget_bytes=1 << 20,
                            oldest_age_s=2.5, dropped_batches=0, dropped_readings=0)
        health = Health(gw=CITY_GW, ts=time.time_ns(), uptime_s=60.0, next_seq=1, spool=spool)
        self.client.publish(self.topics.health(CITY_GW), encode_message(health),
                            qos=1).wait_for_publish(5)

    def readings(self, now_ns: int) -> dict[str, list[Reading]]:
        t = now_ns / 1e9
        city: list[Reading] = []
        for link, (_geo, speed) in LINKS.items():
            wobble = 1.0 + 0.03 * math.sin(t / 7)
            city.append(Reading(device=link, measurement="TrafficFlowObserved", ts=now_ns,
                                fields={"averageVehicleSpeed": round(speed * wobble, 1),
                                        "intensity": 900.0, "occupancy": 0.2},
                                tags={"lane": "1"}))
        for i, bus in enumerate(BUSES):
            lat, lon, heading = _along_loop(t / 60.0 + i / 2)
            city.append(Reading(device=bus, measurement="Vehicle", ts=now_ns,
                                fields={"latitude": round(lat, 6), "longitude": round(lon, 6),
                                        "speed": 36.0, "heading": heading,
                                        "passengerCount": 20 + i, "routeId": "R9",
                                        "tripId": f"R9-{i}"}))
        for park, (_pos, total) in PARKING.items():
            free = int(total * (0.3 + 0.1 * math.sin(t / 30)))
            city.append(Reading(device=park, measurement="OffStreetParking", ts=now_ns,
                                fields={"availableSpotNumber": free, "totalSpotNumber": total}))
        for station, (_pos, pm25) in AIR.items():
            city.append(Reading(device=station, measurement="AirQualityObserved", ts=now_ns,
                                fields={"pm25": pm25, "pm10": pm25 * 1.5, "no2": 20.0}))
        with self._lock:
            hot = self.hot_pm25 if self.hot_pm25 is not None else 8.0
        fault = [Reading(device=HOT_STATION, measurement="AirQualityObserved", ts=now_ns,
                         fields={"pm25": hot, "pm10": 12.0, "no2": 15.0})]
        return {CITY_GW: city, FAULT_GW: fault}

    def inject_pm25(self, value: float | None) -> None:
        """From now on the hot station reports ``value`` (``None``: back to normal)."""
        with self._lock:
            self.hot_pm25 = value

    def publish_once(self) -> None:
        for gw, readings in self.readings(time.time_ns()).items():
            seq = self._seq.get(gw, 0)
            self._seq[gw] = seq + 1
            payload = encode_batch(Batch(gateway=gw, seq=seq, readings=readings))
            self.client.publish(self.topics.telemetry(gw), payload, qos=1)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.publish_once()

    def start(self) -> None:
        self.births()
        self.publish_once()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class DashStack:
    """mosquitto + influxd (session fixtures) + ingest + API + crafted city + simulator."""

    server: ApiServer
    keys: dict[str, str]
    root: str
    database: str
    city: CraftedCity
    fleet: GatewayFleet
    _closers: list[Callable[[], None]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, role: str = "viewer") -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-API-Key": self.keys[role]},
                            timeout=30)

    def close(self) -> None:
        for close in reversed(self._closers):
            close()


def start_dash_stack(mosquitto: Mosquitto, influxd: Influxd, tmp: Path) -> DashStack:
    root = f"t{uuid.uuid4().hex[:12]}"
    database = f"dash_{uuid.uuid4().hex[:12]}"
    closers: list[Callable[[], None]] = []
    influxd.create_database(database)
    closers.append(lambda: influxd.drop_database(database))
    try:
        ingest = WorkerThread(IngestConfig(
            mqtt=MqttConfig(host=mosquitto.host, port=mosquitto.port, topic_root=root,
                            client_id=f"ingest-{uuid.uuid4().hex[:6]}",
                            group=f"g{uuid.uuid4().hex[:6]}"),
            influx=InfluxConfig(url=influxd.url, database=database),
        ))
        ingest.__enter__()
        closers.append(lambda: ingest.__exit__(None, None, None))
        db_url = f"sqlite:///{tmp / 'api.sqlite3'}"
        db = Database(db_url)
        db.create_schema()
        # The crafted city's severe link is steady: let the default congestion rule raise at
        # its first reading instead of after its two minutes, so panels fill at once.
        for rule in db.list_rules():
            if rule.kind == "congestion":
                db.update_rule(rule.id, duration_s=0.0)
        keys = {role: db.create_key(name=f"dash-{role}", role=role)[1]
                for role in ("viewer", "operator", "admin")}
        scenario = load_scenario("small", start="now", speed=1.0, tick_s=1.0,
                                 intervals=dict.fromkeys(_KINDS, 1.0))
        # The small city's bus timetable as GTFS, so late and bunched buses can be counted.
        timetable = City(scenario).timetable
        assert timetable is not None
        today = dt.date.today()
        write_gtfs(timetable, tmp / "gtfs.zip", start=today - dt.timedelta(days=2),
                   end=today + dt.timedelta(days=2))
        # The city's areas, so that a bus is in the area it drives through.
        export_areas(scenario, tmp / "areas.json")
        settings = ApiSettings(
            host="127.0.0.1", port=0,
            mqtt=MqttSettings(host=mosquitto.host, port=mosquitto.port,
                              client_id=f"api-dash-{uuid.uuid4().hex[:8]}"),
            topic_root=root, influx_url=influxd.url, influx_database=database,
            database_url=db_url, alert_tick_s=0.2, completeness_refresh_s=2.0,
            stream_heartbeat_s=2.0, gtfs_static_path=tmp / "gtfs.zip",
            city_timezone="Europe/Oslo", areas_path=tmp / "areas.json",
        )
        server = ApiServer(settings, db=db)
        server.start()
        closers.append(server.stop)
        city = CraftedCity(mosquitto, root)
        city.start()
        closers.append(city.stop)
        fleet = GatewayFleet(FleetConfig(scenario=scenario, topic_root=root,
                                         host=mosquitto.host, port=mosquitto.port,
                                         client_prefix=f"dash{uuid.uuid4().hex[:4]}",
                                         drain_timeout_s=2.0))
        fleet_thread = threading.Thread(target=fleet.run, name="dash.fleet", daemon=True)
        fleet_thread.start()

        def stop_fleet() -> None:
            fleet.stop()
            fleet_thread.join(15)

        closers.append(stop_fleet)
    except BaseException:
        for close in reversed(closers):
            close()
        raise
    return DashStack(server, keys, root, database, city, fleet, closers)


def demo_url(stack: DashStack) -> str:
    return f"{stack.url}/dashboard/"


def api_json(stack: DashStack, path: str, role: str = "viewer", **params: Any) -> Any:
    with stack.client(role) as client:
        response = client.get(path, params=params)
        response.raise_for_status()
        return response.json()


def restart_api(stack: DashStack) -> None:
    """Stop the API and start a new one on the same port and databases (keys survive)."""
    old = stack.server
    old.stop()
    db = Database(old.settings.database_url)
    server = ApiServer(old.settings, db=db)
    deadline = time.monotonic() + 20
    while True:
        try:
            server.start()
            break
        except ApiError:  # the port may linger for a moment: retry, then fail
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
            server = ApiServer(old.settings, db=db)
    stack.server = server
    stack._closers[stack._closers.index(old.stop)] = server.stop
