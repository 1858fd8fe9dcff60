"""GTFS-Realtime: VehiclePositions and TripUpdates of every vehicle the live state holds.

VehiclePositions (``/v1/gtfs-rt/vehicle-positions``) is a FULL_DATASET ``FeedMessage``
(version 2.0) with one ``VehiclePosition`` entity per vehicle with a position; the entity id
is ``<gateway>:<device>`` and stays the same from one fetch to the next. Speed is converted
from km/h to m/s as GTFS-Realtime requires.

TripUpdates (``/v1/gtfs-rt/trip-updates``, needs a timetable: ``gtfs_static_path``) has one
``TripUpdate`` entity per vehicle whose delay against its trip is known
(:mod:`api.state._schedule`): the trip (trip_id, route_id, direction_id, start_date), the
vehicle, ``delay`` (s, positive: late) and a ``StopTimeUpdate`` for the stop it is at or
drives to next and every stop after it, with the delay added to the timetable's times (the
delay is assumed to hold: no prediction). ``.json`` serves either feed in the protobuf JSON
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
from api._errors import NotFound
from api.state import LiveState, Schedule, VehicleAdherence, vehicles

__all__ = ["router", "trip_feed", "vehicle_feed"]

router = APIRouter(prefix="/v1", tags=["transport"])

_FEED_MEDIA: Final = "application/x-protobuf"
# protobuf ships no type stubs here; the JSON mapping is used through Any.
json_format: Any = importlib.import_module("google.protobuf.json_format")


def vehicle_feed(live: LiveState, now_s: int | None = None) -> gtfs_realtime_pb2.FeedMessage:
    """A GTFS-Realtime FULL_DATASET FeedMessage of every vehicle with a position."""
    feed = _header(now_s)
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


def _header(now_s: int | None) -> gtfs_realtime_pb2.FeedMessage:
    feed = gtfs_realtime_pb2.FeedMessage()
    feed.header.gtfs_realtime_version = "2.0"
    feed.header.incrementality = gtfs_realtime_pb2.FeedHeader.FULL_DATASET
    feed.header.timestamp = now_s if now_s is not None else int(time.time())
    return feed


def trip_feed(
    rows: list[VehicleAdherence], now_s: int | None = None
) -> gtfs_realtime_pb2.FeedMessage:
    """A GTFS-Realtime FULL_DATASET FeedMessage of TripUpdates: one per vehicle whose delay
    against its trip is known (``rows``: :meth:`api.state.Schedule.current`)."""
    feed = _header(now_s)
    for a in rows:
        row, trip = a.row, a.trip
        if trip is None or row.delay_s is None or row.startDate is None:
            continue
        entity = feed.entity.add()
        entity.id = row.id
        tu = entity.trip_update
        tu.trip.trip_id = trip.trip_id
        tu.trip.route_id = trip.route_id
        if trip.direction_id is not None:
            tu.trip.direction_id = trip.direction_id
        tu.trip.start_date = row.startDate
        tu.trip.schedule_relationship = gtfs_realtime_pb2.TripDescriptor.SCHEDULED
        tu.vehicle.id = row.id
        tu.vehicle.label = row.device
        tu.timestamp = row.ts_ns // 1_000_000_000
        tu.delay = row.delay_s
        for i in range(a.next_index, len(trip.stop_ids)):
            stu = tu.stop_time_update.add()
            stu.stop_sequence = trip.stop_sequence[i]
            stu.stop_id = trip.stop_ids[i]
            if i > 0:
                stu.arrival.delay = row.delay_s
                stu.arrival.time = round(a.anchor_s + trip.arr[i]) + row.delay_s
            if i < len(trip.stop_ids) - 1:
                stu.departure.delay = row.delay_s
                stu.departure.time = round(a.anchor_s + trip.dep[i]) + row.delay_s
    return feed


async def _trip_feed(schedule: Schedule, live: LiveState) -> gtfs_realtime_pb2.FeedMessage:
    if schedule.feed is None:
        raise NotFound("no GTFS timetable is configured (setting gtfs_static_path)")
    return trip_feed(await schedule.current(live))


@router.get(
    "/gtfs-rt/trip-updates",
    response_model=None,
    summary="GTFS-Realtime TripUpdates feed (protobuf): delay per trip and stop",
    responses={200: {"description": "A GTFS-Realtime FeedMessage",
                     "content": {_FEED_MEDIA: {"schema": {"type": "string",
                                                           "format": "binary"}}}}},
)
async def gtfs_rt_trips(services: ServicesDep, _caller: Viewer) -> Response:
    feed = await _trip_feed(services.schedule, services.live)
    return Response(feed.SerializeToString(), media_type=_FEED_MEDIA)


@router.get("/gtfs-rt/trip-updates.json", response_model=None,
            summary="The GTFS-Realtime TripUpdates feed as JSON (protobuf JSON mapping)")
async def gtfs_rt_trips_json(services: ServicesDep, _caller: Viewer) -> Response:
    feed = await _trip_feed(services.schedule, services.live)
    return json_response(json_format.MessageToDict(feed, preserving_proto_field_name=True))


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
