"""``ema``: exponential moving average per channel."""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from edge_agent.processors._base import BOOL, F64, I64, IDX, Stage, StageConfig, grow

__all__ = ["EmaConfig", "EmaStage"]


class EmaConfig(StageConfig):
    """Exponential moving average: ``y = alpha * x + (1 - alpha) * y``."""

    type: Literal["ema"]
    alpha: Annotated[float, Field(gt=0, le=1)]


class EmaStage(Stage):
    name = "ema"
    state_arrays = ("dropped", "y", "has")

    def __init__(self, cfg: EmaConfig) -> None:
        super().__init__()
        self.alpha = cfg.alpha
        self.y: F64 = np.zeros(0)
        self.has: BOOL = np.zeros(0, dtype=bool)

    def resize(self, n: int) -> None:
        super().resize(n)
        self.y = grow(self.y, n, 0.0)  # type: ignore[assignment]
        self.has = grow(self.has, n, False)  # type: ignore[assignment]

    def apply(self, chan: IDX, ts: I64, val: F64) -> tuple[BOOL | None, F64]:
        out = np.where(self.has[chan], self.alpha * val + (1 - self.alpha) * self.y[chan], val)
        self.y[chan] = out
        self.has[chan] = True
        return None, out
