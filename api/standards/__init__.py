"""Standards: the API's data in the shapes other software already reads.

NGSI-LD (ETSI GS CIM 009: entities over the live state, temporal history from InfluxDB),
OGC SensorThings API 1.1 (read side: Things, Locations, Datastreams, Observations, ...),
GTFS-Realtime VehiclePositions, and the European Air Quality Index bands (EEA).
"""

from collections.abc import Mapping

from fastapi import APIRouter

from api._errors import ProblemDialect
from api.standards import (
    _gtfs_rt,
    _ngsild_http,
    _ngsild_post,
    _ngsild_routes,
    _ngsild_temporal,
    _sta_routes,
)
from api.standards._aqi import BANDS, BREAKPOINTS, AqiBand, aqi_band, pollutant_band
from api.standards._ngsild import etsi_problem

__all__ = [
    "BANDS",
    "BREAKPOINTS",
    "AqiBand",
    "aqi_band",
    "gtfs_rt",
    "ngsild",
    "pollutant_band",
    "problem_dialects",
    "sta",
]

#: ``/v1/gtfs-rt/vehicle-positions`` (protobuf and JSON).
gtfs_rt: APIRouter = _gtfs_rt.router
#: ``/ngsi-ld/v1/...``: entities, types, attributes, @context, then temporal.
#: The last one answers unknown paths (404) and writes (405) as NGSI-LD errors.
ngsild: tuple[APIRouter, ...] = (_ngsild_routes.router, _ngsild_post.router,
                                 _ngsild_temporal.router, _ngsild_http.fallback)
#: ``/sta/v1.1/...``: OGC SensorThings API 1.1, read side.
sta: APIRouter = _sta_routes.router
#: Error dialects by path prefix (:func:`api._errors.add_problem_handlers`).
problem_dialects: Mapping[str, ProblemDialect] = {"/ngsi-ld/": etsi_problem}
