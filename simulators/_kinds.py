"""What each simulated device kind emits: its measurement, fields and rounding.

A declarative table (:data:`KIND_SPECS`) derived from the platform vocabulary
(:data:`telemetry.MEASUREMENTS`): names, types and units come from there, the simulator adds
only the decimals it rounds each float field to, the primary field and the device kind it
announces in births. A field the vocabulary does not know fails at import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from simulators._scenario import DeviceKind
from telemetry import MEASUREMENTS
from telemetry import FieldSpec as VocabField

__all__ = ["KIND_SPECS", "FieldSpec", "KindSpec"]


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """A field the simulator emits: its entry in the platform vocabulary
    (:data:`telemetry.MEASUREMENTS`: name, type, unit) plus how the simulator rounds it."""

    name: str
    vocab: VocabField
    decimals: int = 0

    @property
    def type(self) -> str:
        """``float``, ``int``, ``bool`` or ``string`` (the vocabulary's field types)."""
        return self.vocab.type

    @property
    def unit(self) -> str:
        """The vocabulary's unit; ``-`` for fields without one (strings)."""
        return self.vocab.unit or "-"


@dataclass(frozen=True, slots=True)
class KindSpec:
    measurement: str
    fields: tuple[FieldSpec, ...]
    primary: str
    device_kind: str  # DeviceInfo.kind in births

    def numeric(self) -> tuple[FieldSpec, ...]:
        return tuple(f for f in self.fields if f.type != "string")


def _kind(measurement: str, decimals: dict[str, int], primary: str, device_kind: str) -> KindSpec:
    """A device kind emitting every field of ``measurement`` in vocabulary order; ``decimals``
    names the rounding of each float field (ints and strings are not rounded)."""
    vocab = MEASUREMENTS[measurement].fields
    unknown = set(decimals) - set(vocab)
    missing = {n for n, f in vocab.items() if f.type == "float"} - set(decimals)
    if unknown or missing or primary not in vocab:
        raise ValueError(
            f"{measurement}: decimals for fields not in the vocabulary {sorted(unknown)}, "
            f"float fields without decimals {sorted(missing)}, primary {primary!r}"
        )
    fields = tuple(FieldSpec(n, f, decimals.get(n, 0)) for n, f in vocab.items())
    return KindSpec(measurement, fields, primary, device_kind)


#: Per device kind: the measurement it emits (names, types and units from the vocabulary)
#: and the decimals the simulator rounds each float field to.
KIND_SPECS: Final[dict[DeviceKind, KindSpec]] = {
    "loop": _kind(
        "TrafficFlowObserved",
        {"intensity": 1, "averageVehicleSpeed": 1, "occupancy": 4, "averageHeadwayTime": 2},
        "intensity",
        "loop-detector",
    ),
    "bus": _kind(
        "Vehicle",
        {"latitude": 6, "longitude": 6, "speed": 1, "heading": 1},
        "speed",
        "bus-gps",
    ),
    "parking": _kind("OffStreetParking", {"occupancy": 4}, "occupancy", "car-park"),
    "air": _kind(
        "AirQualityObserved",
        {"pm25": 2, "pm10": 2, "no2": 2, "o3": 2, "co": 3, "temperature": 2,
         "relativeHumidity": 3},
        "pm25",
        "air-quality",
    ),
    "noise": _kind(
        "NoiseLevelObserved", {"LAeq": 1, "LAmax": 1, "LA90": 1}, "LAeq", "sound-level-meter"
    ),
    "water": _kind(
        "WaterConsumptionObserved",
        {"flow": 3, "pressure": 3, "consumption": 3},
        "flow",
        "water-meter",
    ),
    "energy": _kind(
        "ThreePhaseAcMeasurement",
        {"activePower": 1, "reactivePower": 1, "totalActiveEnergyImport": 3, "voltage": 2,
         "current": 3, "frequency": 3, "powerFactor": 3},
        "activePower",
        "energy-meter",
    ),
}
