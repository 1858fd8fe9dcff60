"""Daily profiles of the city: pure functions of the local hour, vectorised over anything.

Relative demand on the roads, for water and for energy, and the occupancy car parks relax
towards; :class:`simulators._city.City` scales them per sensor and adds noise.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = ["energy_profile", "parking_target", "traffic_profile", "water_profile"]

F64 = npt.NDArray[np.float64]
Bool = npt.NDArray[np.bool_]


def _bump(h: F64 | float, centre: float, width: float) -> F64:
    return np.exp(-(((np.asarray(h, dtype=np.float64) - centre) / width) ** 2))


def traffic_profile(hour: F64 | float, weekend: bool = False) -> F64:
    """Relative road demand by local hour: morning and evening peaks on weekdays."""
    h = np.asarray(hour, dtype=np.float64)
    if weekend:
        return 0.1 + 0.45 * _bump(h, 13.0, 4.0)
    return (
        0.08 + 0.92 * _bump(h, 8.0, 1.2) + 0.85 * _bump(h, 16.75, 1.5) + 0.3 * _bump(h, 12.5, 2.5)
    )


def water_profile(hour: F64 | float) -> F64:
    """Relative water demand: low at night (≈0.25), peaks at 07:30 and 19:30."""
    h = np.asarray(hour, dtype=np.float64)
    return 0.25 + 0.75 * _bump(h, 7.5, 1.5) + 0.55 * _bump(h, 19.5, 2.0) + 0.2 * _bump(h, 13.0, 3.0)


def parking_target(hour: float, centrality: F64) -> F64:
    """Target occupancy of car parks: the centre fills for the working day (full at midday),
    residential areas fill at night and half empty by day."""
    day = (
        1.0 / (1.0 + math.exp(-(hour - 8.0) * 2.0)) * (1.0 / (1.0 + math.exp((hour - 17.5) * 1.5)))
    )
    business = 0.06 + 0.97 * day
    residential = 0.9 - 0.5 * day
    w = np.clip((centrality - 0.35) / 0.4, 0.0, 1.0)
    out: F64 = w * business + (1.0 - w) * residential
    return out


def energy_profile(hour: float, commercial: Bool) -> F64:
    h = hour
    residential = 0.35 + 0.35 * float(_bump(h, 7.5, 1.3)) + 0.65 * float(_bump(h, 19.0, 2.2))
    business = 0.25 + 0.75 * float(_bump(h, 12.5, 3.5))
    return np.where(commercial, business, residential)
