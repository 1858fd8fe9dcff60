"""Standards: the API's data in the shapes other software already reads.

NGSI-LD (ETSI GS CIM 009: entities over the live state, temporal history from InfluxDB),
GTFS-Realtime VehiclePositions, and the European Air Quality Index bands (EEA).
"""

from fastapi import APIRouter

from api.standards import _gtfs_rt, _ngsild_routes, _ngsild_temporal
from api.standards._aqi import BANDS, BREAKPOINTS, AqiBand, aqi_band, pollutant_band

__all__ = [
    "BANDS",
    "BREAKPOINTS",
    "AqiBand",
    "aqi_band",
    "gtfs_rt",
    "ngsild",
    "pollutant_band",
]

#: ``/v1/gtfs-rt/vehicle-positions`` (protobuf and JSON).
gtfs_rt: APIRouter = _gtfs_rt.router
#: ``/ngsi-ld/v1/...``: entities, types, attributes, @context, then temporal.
ngsild: tuple[APIRouter, ...] = (_ngsild_routes.router, _ngsild_temporal.router)
