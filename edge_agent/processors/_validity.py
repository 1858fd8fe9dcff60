"""``validity``: drop samples outside ``[min, max]`` and non-finite ones."""

from __future__ import annotations

import math
from typing import Literal, Self

import numpy as np
from pydantic import model_validator

from edge_agent.processors._base import BOOL, F64, I64, IDX, Stage, StageConfig

__all__ = ["ValidityConfig", "ValidityStage"]


class ValidityConfig(StageConfig):
    """Drop samples outside ``[min, max]`` and non-finite ones."""

    type: Literal["validity"]
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _order(self) -> Self:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        return self


class ValidityStage(Stage):
    name = "validity"

    def __init__(self, cfg: ValidityConfig) -> None:
        super().__init__()
        self.lo = -math.inf if cfg.min is None else cfg.min
        self.hi = math.inf if cfg.max is None else cfg.max

    def apply(self, chan: IDX, ts: I64, val: F64) -> tuple[BOOL | None, F64]:
        # NaN fails both comparisons, +-inf fails one of them unless the bound is infinite.
        keep = (val >= self.lo) & (val <= self.hi) & np.isfinite(val)
        return keep, val
