"""GTFS-Realtime: the VehiclePositions feed of every vehicle the live state holds.

The feed (``/v1/gtfs-rt/vehicle-positions``) is a FULL_DATASET ``FeedMessage`` (version 2.0)
with one ``VehiclePosition`` entity per vehicle with a position; the entity id is
``<gateway>:<device>`` and stays the same from one fetch to the next. Speed is converted from
km/h to m/s as GTFS-Realtime requires. ``.json`` serves the same feed in the protobuf JSON
mapping.
"""

from __future__ import annotations

import importlib
import time
from typing import Any, Final

from fastapi import APIRouter
from google.transit import gtfs_realtime_pb2
from starlette.responses import Response

from api._deps import ServicesDep, Viewer
from api._encoding import json_response
from api.state import LiveState, vehicles

__all__ = ["router", "vehicle_feed"]

router = APIRouter(prefix="/v1", tags=["transport"])

_FEED_MEDIA: Final = "application/x-protobuf"
# protobuf ships no type stubs here; the JSON mapping is used through Any.
json_format: Any = importlib.import_module("google.protobuf.json_format")


def vehicle_feed(live: LiveState, now_s: int | None = None) -> gtfs_realtime_pb2.FeedMessage:
    """A GTFS-Realtime FULL_DATASET FeedMessage of every vehicle with a position."""
    feed = gtfs_realtime_pb2.FeedMessage()
    feed.header.gtfs_realtime_version = "2.0"
    feed.header.incrementality = gtfs_realtime_pb2.FeedHeader.FULL_DATASET
    feed.header.timestamp = now_s if now_s is not None else int(time.time())
    for v in vehicles(live, None, None):
        if v.location is None:
            continue
        entity = feed.entity.add()
        entity.id = v.id
        vp = entity.vehicle
        vp.vehicle.id = v.id
        vp.vehicle.label = v.device
        if v.tripId:
            vp.trip.trip_id = v.tripId
        if v.routeId:
            vp.trip.route_id = v.routeId
        vp.position.latitude = v.location.lat
        vp.position.longitude = v.location.lon
        if v.heading is not None:
            vp.position.bearing = v.heading
        if v.speed is not None:
            vp.position.speed = v.speed / 3.6
        vp.timestamp = v.ts_ns // 1_000_000_000
    return feed


@router.get(
    "/gtfs-rt/vehicle-positions",
    response_model=None,
    summary="GTFS-Realtime VehiclePositions feed (protobuf)",
    responses={200: {"description": "A GTFS-Realtime FeedMessage",
                     "content": {_FEED_MEDIA: {"schema": {"type": "string",
                                                           "format": "binary"}}}}},
)
async def gtfs_rt(services: ServicesDep, _caller: Viewer) -> Response:
    return Response(vehicle_feed(services.live).SerializeToString(), media_type=_FEED_MEDIA)


@router.get("/gtfs-rt/vehicle-positions.json", response_model=None,
            summary="The GTFS-Realtime VehiclePositions feed as JSON (protobuf JSON mapping)")
async def gtfs_rt_json(services: ServicesDep, _caller: Viewer) -> Response:
    body = json_format.MessageToDict(vehicle_feed(services.live), preserving_proto_field_name=True)
    return json_response(body)
