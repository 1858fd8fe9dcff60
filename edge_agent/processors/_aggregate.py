"""``aggregate``: tumbling-window statistics per channel, the terminal stage of a chain."""

# ruff: noqa: RUF012 - pydantic copies mutable defaults per instance; ruff cannot see that
# FrozenModel (edge_agent._model) is a pydantic BaseModel.
from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal, Self

import numpy as np
from numpy.typing import NDArray
from pydantic import Field, model_validator

from edge_agent.processors._base import (
    F64,
    I64,
    I64_MAX,
    IDX,
    NS,
    ChainOutput,
    StageConfig,
    Stateful,
    StateMismatch,
    grow,
)

__all__ = ["AggregateConfig", "AggregateFunction", "AggregateStage"]

AggregateFunction = Literal["mean", "min", "max", "count", "last"]


class AggregateConfig(StageConfig):
    """Tumbling windows aligned to the epoch; emits one reading per channel and window.

    The first function's value is written under the field's own name, each further one under
    ``<field>_<function>``. The reading's timestamp is the window start. A window is emitted
    when a later sample arrives or ``grace_s`` after its end.
    """

    type: Literal["aggregate"]
    window_s: Annotated[float, Field(gt=0)]
    functions: Annotated[list[AggregateFunction], Field(min_length=1)] = ["mean"]
    grace_s: Annotated[float, Field(ge=0)] = 1.0

    @model_validator(mode="after")
    def _unique(self) -> Self:
        if len(set(self.functions)) != len(self.functions):
            raise ValueError("functions must not repeat")
        return self


class AggregateStage(Stateful):
    """Tumbling-window statistics per channel; terminal stage of a chain."""

    name: ClassVar[str] = "aggregate"
    state_arrays = ("dropped", "wid", "sum", "min", "max", "last", "count")

    def __init__(self, cfg: AggregateConfig) -> None:
        self.window_ns = int(cfg.window_s * NS)
        self.grace_ns = int(cfg.grace_s * NS)
        self.functions = list(cfg.functions)
        self.suffixes = ["" if i == 0 else f"_{f}" for i, f in enumerate(self.functions)]
        self.dropped: I64 = np.zeros(0, dtype=np.int64)  # late samples
        self.wid: I64 = np.zeros(0, dtype=np.int64)
        self.sum: F64 = np.zeros(0)
        self.min: F64 = np.zeros(0)
        self.max: F64 = np.zeros(0)
        self.last: F64 = np.zeros(0)
        self.count: I64 = np.zeros(0, dtype=np.int64)

    def resize(self, n: int) -> None:
        self.dropped = grow(self.dropped, n, 0)  # type: ignore[assignment]
        self.wid = grow(self.wid, n, 0)  # type: ignore[assignment]
        self.sum = grow(self.sum, n, 0.0)  # type: ignore[assignment]
        self.min = grow(self.min, n, math.inf)  # type: ignore[assignment]
        self.max = grow(self.max, n, -math.inf)  # type: ignore[assignment]
        self.last = grow(self.last, n, 0.0)  # type: ignore[assignment]
        self.count = grow(self.count, n, 0)  # type: ignore[assignment]

    def check_state(self, arrays: dict[str, NDArray[np.generic]]) -> None:
        super().check_state(arrays)
        count, wid = arrays["count"], arrays["wid"]
        if (count < 0).any():  # type: ignore[operator]
            raise StateMismatch("aggregate: negative sample count")
        # window starts of open windows must be valid timestamps (ns in int64, not negative)
        if ((count > 0) & ((wid < 0) | (wid > I64_MAX // self.window_ns - 1))).any():  # type: ignore[operator]
            raise StateMismatch("aggregate: window out of range")

    def _emit(self, rows: IDX) -> ChainOutput:
        cnt = self.count[rows]
        cols: dict[str, F64] = {}
        for fn, suffix in zip(self.functions, self.suffixes, strict=True):
            if fn == "mean":
                cols[suffix] = self.sum[rows] / cnt
            elif fn == "min":
                cols[suffix] = self.min[rows].copy()
            elif fn == "max":
                cols[suffix] = self.max[rows].copy()
            elif fn == "count":
                cols[suffix] = cnt.astype(np.float64)
            else:
                cols[suffix] = self.last[rows].copy()
        out = ChainOutput(rows.copy(), self.wid[rows] * self.window_ns, cols)
        self.sum[rows] = 0.0
        self.min[rows] = math.inf
        self.max[rows] = -math.inf
        self.count[rows] = 0
        return out

    def apply(self, chan: IDX, ts: I64, val: F64) -> ChainOutput | None:
        """Fold one round in; return the windows it closed (or ``None``)."""
        wid = ts // self.window_ns
        cur = self.wid[chan]
        open_ = self.count[chan] > 0
        late = open_ & (wid < cur)
        if late.any():
            self.dropped[chan[late]] += 1
            ok = ~late
            chan, wid, val, cur, open_ = chan[ok], wid[ok], val[ok], cur[ok], open_[ok]
        closing = open_ & (wid > cur)
        out = self._emit(chan[closing]) if closing.any() else None
        self.wid[chan] = wid
        self.sum[chan] += val
        # ``chan`` is unique within a round, so plain fancy-index updates are exact.
        self.min[chan] = np.minimum(self.min[chan], val)
        self.max[chan] = np.maximum(self.max[chan], val)
        self.last[chan] = val
        self.count[chan] += 1
        return out

    def due(self, now_ns: int, n: int, *, force: bool) -> ChainOutput | None:
        """Windows that ended (``grace_s`` ago) by ``now_ns``, or every open one if ``force``."""
        open_ = self.count[:n] > 0
        if not force:
            open_ &= now_ns >= (self.wid[:n] + 1) * self.window_ns + self.grace_ns
        rows = np.flatnonzero(open_)
        return self._emit(rows) if rows.shape[0] else None
