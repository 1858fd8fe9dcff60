"""A small city behind the standards' tests (NGSI-LD, SensorThings, their own clients).

Two gateways publish births and readings through the real ingest into InfluxDB and the
API's live state: ten minutes of air quality, two traffic lanes, a car park, a noise
meter, and a bus (device id ``bus:7``, with a colon) with four positions.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from api_helpers import ApiStack, Publisher, device, wait_until

from ingest import InfluxConfig, IngestConfig, MqttConfig, WorkerThread
from telemetry import Reading

AQ = "urn:ngsi-ld:AirQualityObserved:ngsi-gw1:aq-1"
LANE1 = "urn:ngsi-ld:TrafficFlowObserved:ngsi-gw1:loop-3:lane=1"
LANE2 = "urn:ngsi-ld:TrafficFlowObserved:ngsi-gw1:loop-3:lane=2"
PARK = "urn:ngsi-ld:OffStreetParking:ngsi-gw1:park-1"
BUS = "urn:ngsi-ld:Vehicle:ngsi-gw2:bus%3A7"  # the device id "bus:7" holds a colon
NOISE = "urn:ngsi-ld:NoiseLevelObserved:ngsi-gw1:noise-1"
ALL = {AQ, LANE1, LANE2, PARK, BUS, NOISE}
TYPES = ("AirQualityObserved", "TrafficFlowObserved", "OffStreetParking", "Vehicle",
         "NoiseLevelObserved")
MIN = 60 * 10**9
#: Earlier bus positions (lat, lon), one a minute before the live one (59.93, 10.70).
BUS_TRACK = ((59.9270, 10.7060), (59.9280, 10.7040), (59.9290, 10.7020))


def _live_ids(stack: ApiStack) -> set[str]:
    response = stack.get("/ngsi-ld/v1/entities",
                         params={"type": ",".join(TYPES), "limit": 1000})
    body: list[dict[str, Any]] = response.json() if response.status_code == 200 else []
    return {e["id"] for e in body}


def load_city(stack: ApiStack) -> dict[str, int]:
    """Publish the city and wait until the API and InfluxDB hold it.

    Returns the device timestamps (ns) of the latest readings by entity id.
    """
    config = IngestConfig(
        mqtt=MqttConfig(host=stack.mosquitto.host, port=stack.mosquitto.port,
                        topic_root=stack.root, client_id=f"ingest-{uuid.uuid4().hex[:6]}",
                        group=f"g{uuid.uuid4().hex[:6]}"),
        influx=InfluxConfig(url=stack.influxd.url, database=stack.database),
    )
    pub = Publisher(stack.mosquitto, stack.root)
    now = time.time_ns() // 10**6 * 10**6  # ms: what observedAt can carry
    try:
        with WorkerThread(config):
            pub.birth("ngsi-gw1", [
                device("aq-1", "air", area="centre", lat=59.9139, lon=10.7522),
                device("loop-3", "loop", area="ring", lat=59.9200, lon=10.7600),
                device("park-1", "parking", area="centre", lat=59.9500, lon=10.8000),
                device("noise-1", "noise", area="harbour", lat=59.9000, lon=10.7300),
            ])
            pub.birth("ngsi-gw2", [device("bus:7", "gps")])
            # Ten minutes of air quality; the last one is the live state.
            pub.readings("ngsi-gw1", [
                Reading(device="aq-1", measurement="AirQualityObserved", ts=now - (9 - i) * MIN,
                        fields={"pm25": 10.0 + i, "no2": 30.0, "temperature": 21.5})
                for i in range(10)
            ])
            pub.readings("ngsi-gw1", [
                Reading(device="loop-3", measurement="TrafficFlowObserved", ts=now,
                        fields={"intensity": 540.0, "averageVehicleSpeed": 43.5,
                                "occupancy": 0.21, "vehicleCount": 9}, tags={"lane": "1"}),
                Reading(device="loop-3", measurement="TrafficFlowObserved", ts=now,
                        fields={"intensity": 820.0, "averageVehicleSpeed": 18.0,
                                "occupancy": 0.55, "vehicleCount": 14}, tags={"lane": "2"}),
                Reading(device="park-1", measurement="OffStreetParking", ts=now,
                        fields={"availableSpotNumber": 40, "totalSpotNumber": 200,
                                "occupancy": 0.8}),
                Reading(device="noise-1", measurement="NoiseLevelObserved", ts=now,
                        fields={"LAeq": 64.5, "LAmax": 80.1, "LA90": 50.0}),
            ])
            pub.readings("ngsi-gw2", [
                Reading(device="bus:7", measurement="Vehicle", ts=now - (3 - i) * MIN,
                        fields={"latitude": lat, "longitude": lon, "speed": 30.0,
                                "heading": 270.0, "routeId": "31", "passengerCount": 10})
                for i, (lat, lon) in enumerate(BUS_TRACK)
            ])
            pub.reading("ngsi-gw2", "bus:7", "Vehicle",
                        {"latitude": 59.9300, "longitude": 10.7000, "speed": 31.0,
                         "heading": 270.0, "routeId": "31", "passengerCount": 12}, ts=now)
            wait_until(lambda: len(_live_ids(stack)) == len(ALL), timeout=20)
            wait_until(lambda: stack.influxd.count(
                stack.database, "AirQualityObserved", "pm25") == 10, timeout=20)
            wait_until(lambda: stack.influxd.count(
                stack.database, "Vehicle", "latitude") == 1 + len(BUS_TRACK), timeout=20)
    finally:
        pub.close()
    return dict.fromkeys(ALL, now)
