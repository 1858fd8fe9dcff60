"""Read the API's GTFS-Realtime feeds with the official bindings (gtfs-realtime-bindings,
run by .venv-clients/bin/python).

Input: one JSON argument {"url", "key"}. Output: one JSON object on stdout: per TripUpdate
entity its trip, vehicle, timestamp, delay and stop time updates, and the vehicle ids of the
VehiclePositions feed.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from typing import Any

from google.transit import gtfs_realtime_pb2


def fetch(url: str, key: str) -> Any:
    request = urllib.request.Request(url, headers={"X-API-Key": key})  # noqa: S310
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        feed = gtfs_realtime_pb2.FeedMessage()
        feed.ParseFromString(response.read())
        return feed


def main() -> None:
    args = json.loads(sys.argv[1])
    trips = fetch(args["url"] + "/v1/gtfs-rt/trip-updates", args["key"])
    positions = fetch(args["url"] + "/v1/gtfs-rt/vehicle-positions", args["key"])
    out = {
        "version": trips.header.gtfs_realtime_version,
        "trip_updates": [
            {
                "id": e.id,
                "trip_id": e.trip_update.trip.trip_id,
                "route_id": e.trip_update.trip.route_id,
                "start_date": e.trip_update.trip.start_date,
                "vehicle": e.trip_update.vehicle.id,
                "timestamp": e.trip_update.timestamp,
                "delay": e.trip_update.delay,
                "stops": [
                    [u.stop_sequence, u.stop_id, u.arrival.delay, u.departure.delay]
                    for u in e.trip_update.stop_time_update
                ],
            }
            for e in trips.entity
            if e.HasField("trip_update")
        ],
        "vehicles": sorted(e.vehicle.vehicle.id for e in positions.entity),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
