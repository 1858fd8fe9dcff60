"""``hampel``: causal outlier rejection against the median of a channel's recent samples."""

from __future__ import annotations

from typing import Annotated, Final, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from edge_agent.processors._base import (
    BOOL,
    F64,
    I64,
    IDX,
    Stage,
    StageConfig,
    StateMismatch,
    grow,
)

__all__ = ["HampelConfig", "HampelStage"]


class HampelConfig(StageConfig):
    """Outlier rejection: drop a sample further than ``k`` scaled MADs from the median of the
    previous ``window`` samples of its channel (causal Hampel filter).

    The window holds raw samples, rejected ones included, so a genuine level shift is
    accepted after about ``window / 2`` samples. Until the window is full every sample passes.
    ``min_deviation`` floors the threshold so that a perfectly flat history (MAD 0) does not
    reject the first small change.
    """

    type: Literal["hampel"]
    window: Annotated[int, Field(ge=3, le=255)] = 7
    k: Annotated[float, Field(gt=0)] = 3.0
    min_deviation: Annotated[float, Field(ge=0)] = 0.0


class HampelStage(Stage):
    name = "hampel"
    state_arrays = ("dropped", "buf", "pos", "count")
    _SCALE: Final = 1.4826  # MAD -> standard deviation for normal data

    def __init__(self, cfg: HampelConfig) -> None:
        super().__init__()
        self.window = cfg.window
        self.k = cfg.k * self._SCALE
        self.floor = cfg.min_deviation
        self.buf: F64 = np.zeros((0, cfg.window))
        self.pos: IDX = np.zeros(0, dtype=np.intp)
        self.count: IDX = np.zeros(0, dtype=np.intp)

    def resize(self, n: int) -> None:
        super().resize(n)
        self.buf = grow(self.buf, n, 0.0)  # type: ignore[assignment]
        self.pos = grow(self.pos, n, 0)  # type: ignore[assignment]
        self.count = grow(self.count, n, 0)  # type: ignore[assignment]

    def check_state(self, arrays: dict[str, NDArray[np.generic]]) -> None:
        super().check_state(arrays)
        pos = arrays["pos"]
        if ((pos < 0) | (pos >= self.window)).any() or (arrays["count"] < 0).any():  # type: ignore[operator]
            raise StateMismatch("hampel: window position out of range")

    def apply(self, chan: IDX, ts: I64, val: F64) -> tuple[BOOL | None, F64]:
        full = self.count[chan] >= self.window
        keep = np.ones(chan.shape[0], dtype=bool)
        if full.any():
            rows = chan[full]
            win = self.buf[rows]
            med = np.median(win, axis=1)
            mad = np.median(np.abs(win - med[:, None]), axis=1)
            thr = np.maximum(self.k * mad, self.floor)
            keep[full] = np.abs(val[full] - med) <= thr
        pos = self.pos[chan]
        self.buf[chan, pos] = val
        self.pos[chan] = (pos + 1) % self.window
        self.count[chan] += 1
        return keep, val
