"""Air-quality bands: the European Environment Agency's European Air Quality Index (EAQI).

Bands by pollutant concentration in ug/m3, as published by the EEA for the index it ran from
2017 to 2024 (https://airindex.eea.europa.eu/, "European Air Quality Index" technical note);
the upper bound of each band is exclusive::

    band             PM2.5     PM10      NO2       O3
    good             0-10      0-20      0-40      0-50
    fair             10-20     20-40     40-90     50-100
    moderate         20-25     40-50     90-120    100-130
    poor             25-50     50-100    120-230   130-240
    very poor        50-75     100-150   230-340   240-380
    extremely poor   75+       150+      340+      380+

The index of a station is the worst band of the pollutants it measures. The EEA applies the
bands to hourly concentrations (PM as 24-hour running means where available); the API applies
them to the latest reading, so treat the live band as indicative.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping
from typing import Final, Literal

__all__ = ["BANDS", "BREAKPOINTS", "AqiBand", "aqi_band", "pollutant_band"]

AqiBand = Literal["good", "fair", "moderate", "poor", "very poor", "extremely poor"]
BANDS: Final[tuple[AqiBand, ...]] = (
    "good", "fair", "moderate", "poor", "very poor", "extremely poor",
)
#: Field name (AirQualityObserved) -> lower bounds of bands 2..6.
BREAKPOINTS: Final[Mapping[str, tuple[float, ...]]] = {
    "pm25": (10.0, 20.0, 25.0, 50.0, 75.0),
    "pm10": (20.0, 40.0, 50.0, 100.0, 150.0),
    "no2": (40.0, 90.0, 120.0, 230.0, 340.0),
    "o3": (50.0, 100.0, 130.0, 240.0, 380.0),
}


def pollutant_band(field: str, value: float) -> AqiBand | None:
    bounds = BREAKPOINTS.get(field)
    if bounds is None or value != value or value < 0:  # NaN or negative: no band
        return None
    return BANDS[bisect_right(bounds, value)]


def aqi_band(fields: Mapping[str, object]) -> tuple[AqiBand | None, dict[str, AqiBand]]:
    """The station's band (worst pollutant) and each pollutant's band."""
    per: dict[str, AqiBand] = {}
    for name in BREAKPOINTS:
        value = fields.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            band = pollutant_band(name, float(value))
            if band is not None:
                per[name] = band
    if not per:
        return None, per
    return max(per.values(), key=BANDS.index), per
