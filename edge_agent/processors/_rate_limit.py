"""``rate_limit``: at most one sample per ``min_interval_s`` per channel."""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from edge_agent.processors._base import BOOL, F64, I64, IDX, NS, Stage, StageConfig, grow

__all__ = ["RateLimitConfig", "RateLimitStage"]


class RateLimitConfig(StageConfig):
    """At most one sample per ``min_interval_s`` per channel; the rest are dropped."""

    type: Literal["rate_limit"]
    min_interval_s: Annotated[float, Field(gt=0)]


class RateLimitStage(Stage):
    name = "rate_limit"
    state_arrays = ("dropped", "last_t", "has")

    def __init__(self, cfg: RateLimitConfig) -> None:
        super().__init__()
        self.min_ns = int(cfg.min_interval_s * NS)
        self.last_t: I64 = np.zeros(0, dtype=np.int64)
        self.has: BOOL = np.zeros(0, dtype=bool)

    def resize(self, n: int) -> None:
        super().resize(n)
        self.last_t = grow(self.last_t, n, 0)  # type: ignore[assignment]
        self.has = grow(self.has, n, False)  # type: ignore[assignment]

    def apply(self, chan: IDX, ts: I64, val: F64) -> tuple[BOOL | None, F64]:
        keep = ~self.has[chan] | (ts - self.last_t[chan] >= self.min_ns)
        kept = chan[keep]
        self.last_t[kept] = ts[keep]
        self.has[kept] = True
        return keep, val
