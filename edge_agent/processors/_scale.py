"""``scale``: unit conversion and calibration, ``value * gain + offset``."""

from __future__ import annotations

from typing import Final, Literal, Self

from pydantic import model_validator

from edge_agent.processors._base import BOOL, F64, I64, IDX, Stage, StageConfig

__all__ = ["UNIT_CONVERSIONS", "ScaleConfig", "ScaleStage"]

#: Named unit conversions for the ``scale`` stage: (from, to) -> (gain, offset).
UNIT_CONVERSIONS: Final[dict[tuple[str, str], tuple[float, float]]] = {
    ("km/h", "m/s"): (1 / 3.6, 0.0),
    ("m/s", "km/h"): (3.6, 0.0),
    ("mph", "km/h"): (1.609344, 0.0),
    ("degF", "Cel"): (5 / 9, -32 * 5 / 9),
    ("Cel", "degF"): (9 / 5, 32.0),
    ("K", "Cel"): (1.0, -273.15),
    ("bar", "kPa"): (100.0, 0.0),
    ("psi", "kPa"): (6.894757293168, 0.0),
    ("mbar", "hPa"): (1.0, 0.0),
    ("Pa", "hPa"): (0.01, 0.0),
    ("l/s", "m3/h"): (3.6, 0.0),
    ("Wh", "kWh"): (0.001, 0.0),
    ("W", "kW"): (0.001, 0.0),
    ("mA", "A"): (0.001, 0.0),
    ("ppb", "ug/m3"): (1.0, 0.0),
}


class ScaleConfig(StageConfig):
    """Unit conversion and calibration: ``value * gain + offset``.

    With ``from_unit``/``to_unit`` the conversion comes from :data:`UNIT_CONVERSIONS`
    and ``gain``/``offset`` are applied after it (calibration on top of conversion).
    """

    type: Literal["scale"]
    gain: float = 1.0
    offset: float = 0.0
    from_unit: str | None = None
    to_unit: str | None = None

    @model_validator(mode="after")
    def _units(self) -> Self:
        if (self.from_unit is None) != (self.to_unit is None):
            raise ValueError("from_unit and to_unit go together")
        if self.from_unit is not None and (self.from_unit, self.to_unit) not in UNIT_CONVERSIONS:
            known = ", ".join(f"{a}->{b}" for a, b in UNIT_CONVERSIONS)
            raise ValueError(f"no conversion {self.from_unit}->{self.to_unit} (known: {known})")
        return self

    def effective(self) -> tuple[float, float]:
        """The combined (gain, offset)."""
        g0, o0 = (1.0, 0.0)
        if self.from_unit is not None and self.to_unit is not None:
            g0, o0 = UNIT_CONVERSIONS[(self.from_unit, self.to_unit)]
        return g0 * self.gain, o0 * self.gain + self.offset


class ScaleStage(Stage):
    name = "scale"

    def __init__(self, cfg: ScaleConfig) -> None:
        super().__init__()
        self.gain, self.offset = cfg.effective()

    def apply(self, chan: IDX, ts: I64, val: F64) -> tuple[BOOL | None, F64]:
        return None, val * self.gain + self.offset
