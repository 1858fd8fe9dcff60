"""``deadband``: report a sample only when it moved far enough from the last reported one."""

from __future__ import annotations

from typing import Annotated, Literal, Self

import numpy as np
from pydantic import Field, model_validator

from edge_agent.processors._base import BOOL, F64, I64, IDX, NS, Stage, StageConfig, grow

__all__ = ["DeadbandConfig", "DeadbandStage"]


class DeadbandConfig(StageConfig):
    """Report a sample only when it moved far enough from the last *reported* one.

    A sample passes if it differs from the last reported value by at least ``absolute``, or
    by at least ``percent`` of it, or if ``max_silence_s`` passed since the last report (so a
    flat signal still reports). The first sample of a channel always passes.
    """

    type: Literal["deadband"]
    absolute: Annotated[float, Field(gt=0)] | None = None
    percent: Annotated[float, Field(gt=0)] | None = None
    max_silence_s: Annotated[float, Field(gt=0)] = 300.0

    @model_validator(mode="after")
    def _some(self) -> Self:
        if self.absolute is None and self.percent is None:
            raise ValueError("set absolute, percent or both")
        return self


class DeadbandStage(Stage):
    name = "deadband"
    state_arrays = ("dropped", "last_v", "last_t", "has")

    def __init__(self, cfg: DeadbandConfig) -> None:
        super().__init__()
        self.absolute = cfg.absolute
        self.fraction = None if cfg.percent is None else cfg.percent / 100.0
        self.silence_ns = int(cfg.max_silence_s * NS)
        self.last_v: F64 = np.zeros(0)
        self.last_t: I64 = np.zeros(0, dtype=np.int64)
        self.has: BOOL = np.zeros(0, dtype=bool)

    def resize(self, n: int) -> None:
        super().resize(n)
        self.last_v = grow(self.last_v, n, 0.0)  # type: ignore[assignment]
        self.last_t = grow(self.last_t, n, 0)  # type: ignore[assignment]
        self.has = grow(self.has, n, False)  # type: ignore[assignment]

    def apply(self, chan: IDX, ts: I64, val: F64) -> tuple[BOOL | None, F64]:
        last = self.last_v[chan]
        moved = np.abs(val - last)
        keep = ~self.has[chan] | (ts - self.last_t[chan] >= self.silence_ns)
        if self.absolute is not None:
            keep |= moved >= self.absolute
        if self.fraction is not None:
            keep |= (moved > 0) & (moved >= self.fraction * np.abs(last))
        kept = chan[keep]
        self.last_v[kept] = val[keep]
        self.last_t[kept] = ts[keep]
        self.has[kept] = True
        return keep, val
