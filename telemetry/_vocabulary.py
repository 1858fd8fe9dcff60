"""Measurements the platform knows, named after the FIWARE Smart Data Models.

A measurement is an InfluxDB measurement and a Smart Data Models entity type; its fields are
the entity's numeric attributes. The vocabulary is open: a gateway may send other
measurements that follow the naming rules, and they are stored as sent. For the known ones
the platform knows units, types (so a float field sent as ``12`` is still written as a
float and never hits a field-type conflict) and which services read them.

Cardinality: the tags a reading produces are ``gateway``, ``device`` and the reading's own
tags (``lane`` for loop detectors, ``route`` is *not* a tag). A city of 20,000 devices with
a few lanes each stays well under a million series. Anything that grows without bound
(trip ids, plate numbers, free text) is a field, never a tag.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal

import msgspec

__all__ = ["MEASUREMENTS", "FieldSpec", "MeasurementSpec", "float_fields"]

FieldType = Literal["float", "int", "bool", "string"]


class FieldSpec(msgspec.Struct, frozen=True):
    type: FieldType
    unit: str
    description: str


class MeasurementSpec(msgspec.Struct, frozen=True):
    domain: Literal["transport", "resource", "platform"]
    description: str
    fields: Mapping[str, FieldSpec]
    tags: tuple[str, ...] = ()


def _f(unit: str, description: str) -> FieldSpec:
    return FieldSpec("float", unit, description)


def _i(unit: str, description: str) -> FieldSpec:
    return FieldSpec("int", unit, description)


MEASUREMENTS: Final[Mapping[str, MeasurementSpec]] = {
    "TrafficFlowObserved": MeasurementSpec(
        "transport",
        "Loop detector / traffic counter over one aggregation period, per lane.",
        {
            "intensity": _f("veh/h", "vehicle flow, scaled to vehicles per hour"),
            "averageVehicleSpeed": _f("km/h", "mean speed of the vehicles counted"),
            "occupancy": _f("1", "fraction of the period the detector was occupied (0..1)"),
            "averageHeadwayTime": _f("s", "mean time between vehicles"),
            "vehicleCount": _i("1", "vehicles counted in the period"),
        },
        tags=("lane",),
    ),
    "Vehicle": MeasurementSpec(
        "transport",
        "A fleet vehicle (bus, tram) position report.",
        {
            "latitude": _f("deg", "WGS84 latitude"),
            "longitude": _f("deg", "WGS84 longitude"),
            "speed": _f("km/h", "speed over ground"),
            "heading": _f("deg", "course over ground, clockwise from true north"),
            "passengerCount": _i("1", "passengers on board"),
            "routeId": FieldSpec("string", "", "GTFS route_id being served"),
            "tripId": FieldSpec("string", "", "GTFS trip_id being served"),
        },
    ),
    "OffStreetParking": MeasurementSpec(
        "transport",
        "Car park occupancy.",
        {
            "availableSpotNumber": _i("1", "free spaces"),
            "totalSpotNumber": _i("1", "spaces in service"),
            "occupancy": _f("1", "fraction occupied (0..1)"),
        },
    ),
    "AirQualityObserved": MeasurementSpec(
        "resource",
        "Air-quality station.",
        {
            "pm25": _f("ug/m3", "PM2.5 concentration"),
            "pm10": _f("ug/m3", "PM10 concentration"),
            "no2": _f("ug/m3", "NO2 concentration"),
            "o3": _f("ug/m3", "O3 concentration"),
            "co": _f("mg/m3", "CO concentration"),
            "temperature": _f("Cel", "air temperature"),
            "relativeHumidity": _f("1", "relative humidity (0..1)"),
        },
    ),
    "NoiseLevelObserved": MeasurementSpec(
        "resource",
        "Sound level meter over one period.",
        {
            "LAeq": _f("dB(A)", "A-weighted equivalent continuous level"),
            "LAmax": _f("dB(A)", "A-weighted maximum level"),
            "LA90": _f("dB(A)", "level exceeded 90% of the period (background)"),
        },
    ),
    "WaterConsumptionObserved": MeasurementSpec(
        "resource",
        "Water flow meter on the distribution network.",
        {
            "flow": _f("m3/h", "volumetric flow rate"),
            "pressure": _f("bar", "line pressure"),
            "consumption": _f("m3", "cumulative volume (totaliser)"),
        },
    ),
    "ThreePhaseAcMeasurement": MeasurementSpec(
        "resource",
        "Electricity meter (single or three phase; totals are summed over phases).",
        {
            "activePower": _f("W", "total active power"),
            "reactivePower": _f("var", "total reactive power"),
            "totalActiveEnergyImport": _f("kWh", "imported active energy (totaliser)"),
            "voltage": _f("V", "phase-to-neutral voltage (mean over phases)"),
            "current": _f("A", "line current (sum over phases)"),
            "frequency": _f("Hz", "grid frequency"),
            "powerFactor": _f("1", "total power factor"),
        },
    ),
}

_FLOAT_FIELDS: Final = {
    name: frozenset(k for k, f in spec.fields.items() if f.type == "float")
    for name, spec in MEASUREMENTS.items()
}
_EMPTY: Final[frozenset[str]] = frozenset()


def float_fields(measurement: str) -> frozenset[str]:
    """Fields of a known measurement that are floats even when sent as JSON integers."""
    return _FLOAT_FIELDS.get(measurement, _EMPTY)
