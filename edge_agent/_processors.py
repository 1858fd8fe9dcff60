"""Per-channel processors, vectorised with numpy across channels.

A *channel* is one numeric field of one device: ``(device, measurement, tags, field)``.
Config rules map channels to a *chain* of stages; every channel that a rule matches shares
the rule's parameters, and its state lives in one row of the chain's numpy arrays::

    samples of a tick ──▶ split into rounds ──▶ [validity] ─▶ [scale] ─▶ [hampel] ─▶
    (chan, ts, value)     (k-th sample of        [deadband] ─▶ [ema] ─▶ [rate_limit] ─▶ [aggregate]
                           every channel)        each stage: keep-mask + values for the round

A *round* holds at most one sample per channel, so a stage is a handful of array operations
on the rows of the channels present: no Python loop per sample. Stages run in the order the
config lists them; ``aggregate`` closes a chain (it turns samples into window statistics).

Every stage counts what it dropped, per channel (``Stage.dropped``). Stages are plugins:
:data:`STAGES` maps a config ``type`` to its typed config model and its implementation.

**State.** Everything a stage remembers about a channel lives in the per-row arrays named in
its ``state_arrays``; :meth:`Chain.state` returns them (rows ``[:n]``) and
:meth:`Chain.load_state` puts them back into a fresh chain, refusing arrays whose dtype or
shape does not fit (:class:`StateMismatch`). The agent checkpoints them into the spool.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Annotated, ClassVar, Final, Literal, Self

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "STAGES",
    "UNIT_CONVERSIONS",
    "AggregateConfig",
    "AggregateStage",
    "Chain",
    "ChainOutput",
    "DeadbandConfig",
    "DeadbandStage",
    "EmaConfig",
    "EmaStage",
    "HampelConfig",
    "HampelStage",
    "RateLimitConfig",
    "RateLimitStage",
    "ScaleConfig",
    "ScaleStage",
    "Stage",
    "StageConfig",
    "StageSpec",
    "StateMismatch",
    "ValidityConfig",
    "ValidityStage",
    "split_rounds",
]

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
IDX = NDArray[np.intp]
BOOL = NDArray[np.bool_]

_NS: Final = 1_000_000_000
_I64_MAX: Final = 2**63 - 1

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


class StageConfig(BaseModel):
    """Base of every stage config: frozen, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


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


class EmaConfig(StageConfig):
    """Exponential moving average: ``y = alpha * x + (1 - alpha) * y``."""

    type: Literal["ema"]
    alpha: Annotated[float, Field(gt=0, le=1)]


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


class RateLimitConfig(StageConfig):
    """At most one sample per ``min_interval_s`` per channel; the rest are dropped."""

    type: Literal["rate_limit"]
    min_interval_s: Annotated[float, Field(gt=0)]


StageSpec = Annotated[
    ValidityConfig
    | ScaleConfig
    | DeadbandConfig
    | HampelConfig
    | EmaConfig
    | AggregateConfig
    | RateLimitConfig,
    Field(discriminator="type"),
]


def _grow(a: NDArray[np.generic], n: int, fill: float | int | bool) -> NDArray[np.generic]:
    if a.shape[0] >= n:
        return a
    cap = max(n, 2 * a.shape[0], 16)
    out = np.full((cap, *a.shape[1:]), fill, dtype=a.dtype)
    out[: a.shape[0]] = a
    return out


class StateMismatch(ValueError):
    """Saved stage state that does not fit the stage (other dtype, shape or fields)."""


class _Stateful:
    """Per-channel state in row-indexed numpy arrays, saved and restored by name."""

    name: ClassVar[str]
    #: Attributes holding one row per channel (first axis); the stage's whole memory.
    state_arrays: ClassVar[tuple[str, ...]] = ("dropped",)

    def resize(self, n: int) -> None:
        raise NotImplementedError

    def state(self, n: int) -> dict[str, NDArray[np.generic]]:
        """The first ``n`` rows of every state array (views, not copies)."""
        return {k: getattr(self, k)[:n] for k in self.state_arrays}

    def load_state(self, arrays: dict[str, NDArray[np.generic]], n: int, cap: int) -> None:
        """Replace the state by ``arrays`` (``n`` rows each); room for ``cap`` channels."""
        if set(arrays) != set(self.state_arrays):
            raise StateMismatch(
                f"{self.name}: saved arrays {sorted(arrays)}, expected {sorted(self.state_arrays)}"
            )
        for k in self.state_arrays:
            a, cur = arrays[k], getattr(self, k)
            if a.dtype != cur.dtype or a.shape != (n, *cur.shape[1:]):
                raise StateMismatch(
                    f"{self.name}.{k}: saved {a.dtype}{list(a.shape)}, "
                    f"expected {cur.dtype}{[n, *cur.shape[1:]]}"
                )
        self.check_state(arrays)
        self.resize(cap)
        for k in self.state_arrays:
            getattr(self, k)[:n] = arrays[k]

    def check_state(self, arrays: dict[str, NDArray[np.generic]]) -> None:
        """Refuse saved values this stage could not work with (indices out of range)."""
        if (arrays["dropped"] < 0).any():  # type: ignore[operator]
            raise StateMismatch(f"{self.name}: negative drop counts")


class Stage(_Stateful, ABC):
    """A filter stage: per round, a keep-mask and the (possibly changed) values."""

    def __init__(self) -> None:
        self.dropped: I64 = np.zeros(0, dtype=np.int64)

    def resize(self, n: int) -> None:
        """Make room for ``n`` channels."""
        self.dropped = _grow(self.dropped, n, 0)  # type: ignore[assignment]

    @abstractmethod
    def apply(self, chan: IDX, ts: I64, val: F64) -> tuple[BOOL | None, F64]:
        """Process one round (``chan`` unique); ``None`` as mask keeps everything."""


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


class ScaleStage(Stage):
    name = "scale"

    def __init__(self, cfg: ScaleConfig) -> None:
        super().__init__()
        self.gain, self.offset = cfg.effective()

    def apply(self, chan: IDX, ts: I64, val: F64) -> tuple[BOOL | None, F64]:
        return None, val * self.gain + self.offset


class DeadbandStage(Stage):
    name = "deadband"
    state_arrays = ("dropped", "last_v", "last_t", "has")

    def __init__(self, cfg: DeadbandConfig) -> None:
        super().__init__()
        self.absolute = cfg.absolute
        self.fraction = None if cfg.percent is None else cfg.percent / 100.0
        self.silence_ns = int(cfg.max_silence_s * _NS)
        self.last_v: F64 = np.zeros(0)
        self.last_t: I64 = np.zeros(0, dtype=np.int64)
        self.has: BOOL = np.zeros(0, dtype=bool)

    def resize(self, n: int) -> None:
        super().resize(n)
        self.last_v = _grow(self.last_v, n, 0.0)  # type: ignore[assignment]
        self.last_t = _grow(self.last_t, n, 0)  # type: ignore[assignment]
        self.has = _grow(self.has, n, False)  # type: ignore[assignment]

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
        self.buf = _grow(self.buf, n, 0.0)  # type: ignore[assignment]
        self.pos = _grow(self.pos, n, 0)  # type: ignore[assignment]
        self.count = _grow(self.count, n, 0)  # type: ignore[assignment]

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
        self.y = _grow(self.y, n, 0.0)  # type: ignore[assignment]
        self.has = _grow(self.has, n, False)  # type: ignore[assignment]

    def apply(self, chan: IDX, ts: I64, val: F64) -> tuple[BOOL | None, F64]:
        out = np.where(self.has[chan], self.alpha * val + (1 - self.alpha) * self.y[chan], val)
        self.y[chan] = out
        self.has[chan] = True
        return None, out


class RateLimitStage(Stage):
    name = "rate_limit"
    state_arrays = ("dropped", "last_t", "has")

    def __init__(self, cfg: RateLimitConfig) -> None:
        super().__init__()
        self.min_ns = int(cfg.min_interval_s * _NS)
        self.last_t: I64 = np.zeros(0, dtype=np.int64)
        self.has: BOOL = np.zeros(0, dtype=bool)

    def resize(self, n: int) -> None:
        super().resize(n)
        self.last_t = _grow(self.last_t, n, 0)  # type: ignore[assignment]
        self.has = _grow(self.has, n, False)  # type: ignore[assignment]

    def apply(self, chan: IDX, ts: I64, val: F64) -> tuple[BOOL | None, F64]:
        keep = ~self.has[chan] | (ts - self.last_t[chan] >= self.min_ns)
        kept = chan[keep]
        self.last_t[kept] = ts[keep]
        self.has[kept] = True
        return keep, val


@dataclass(frozen=True, slots=True)
class ChainOutput:
    """What a chain emitted: channel rows, timestamps and one column per output field suffix
    (``""`` is the field itself, ``"_max"`` etc. come from aggregation)."""

    chan: IDX
    ts: I64
    columns: dict[str, F64]

    @classmethod
    def empty(cls, suffixes: list[str] | None = None) -> ChainOutput:
        cols = {s: np.zeros(0) for s in (suffixes or [""])}
        return cls(np.zeros(0, np.intp), np.zeros(0, np.int64), cols)

    def __len__(self) -> int:
        return int(self.chan.shape[0])


class AggregateStage(_Stateful):
    """Tumbling-window statistics per channel; terminal stage of a chain."""

    name: ClassVar[str] = "aggregate"
    state_arrays = ("dropped", "wid", "sum", "min", "max", "last", "count")

    def __init__(self, cfg: AggregateConfig) -> None:
        self.window_ns = int(cfg.window_s * _NS)
        self.grace_ns = int(cfg.grace_s * _NS)
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
        self.dropped = _grow(self.dropped, n, 0)  # type: ignore[assignment]
        self.wid = _grow(self.wid, n, 0)  # type: ignore[assignment]
        self.sum = _grow(self.sum, n, 0.0)  # type: ignore[assignment]
        self.min = _grow(self.min, n, math.inf)  # type: ignore[assignment]
        self.max = _grow(self.max, n, -math.inf)  # type: ignore[assignment]
        self.last = _grow(self.last, n, 0.0)  # type: ignore[assignment]
        self.count = _grow(self.count, n, 0)  # type: ignore[assignment]

    def check_state(self, arrays: dict[str, NDArray[np.generic]]) -> None:
        super().check_state(arrays)
        count, wid = arrays["count"], arrays["wid"]
        if (count < 0).any():  # type: ignore[operator]
            raise StateMismatch("aggregate: negative sample count")
        # window starts of open windows must be valid timestamps (ns in int64, not negative)
        if ((count > 0) & ((wid < 0) | (wid > _I64_MAX // self.window_ns - 1))).any():  # type: ignore[operator]
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


def split_rounds(chan: IDX, ts: I64) -> list[IDX]:
    """Index arrays, one per round: round ``k`` holds the k-th sample (in time order) of
    every channel that has one. Each round's channels are unique."""
    n = chan.shape[0]
    if n == 0:
        return []
    order = np.lexsort((ts, chan))
    c = chan[order]
    idx = np.arange(n)
    start = np.empty(n, dtype=bool)
    start[0] = True
    np.not_equal(c[1:], c[:-1], out=start[1:])
    if start.all():  # the common case: one sample per channel
        return [order]
    rank = idx - np.maximum.accumulate(np.where(start, idx, 0))
    by_rank = np.argsort(rank, kind="stable")
    bounds = np.searchsorted(rank[by_rank], np.arange(int(rank.max()) + 2))
    return [order[by_rank[bounds[i] : bounds[i + 1]]] for i in range(bounds.shape[0] - 1)]


def _build(spec: StageConfig) -> Stage | AggregateStage:
    for cfg_type, impl in STAGES.values():
        if isinstance(spec, cfg_type):
            built: Stage | AggregateStage = impl(spec)  # type: ignore[arg-type,call-arg]
            return built
    raise TypeError(f"no stage for {type(spec).__name__}")


class Chain:
    """The stages of one config rule, with the state of every channel the rule matched."""

    def __init__(self, specs: list[StageConfig]) -> None:
        built = [_build(s) for s in specs]
        self.aggregate: AggregateStage | None = None
        last = built[-1] if built else None
        if isinstance(last, AggregateStage):
            self.aggregate = last
            built.pop()
        self.stages: list[Stage] = [s for s in built if isinstance(s, Stage)]
        if len(self.stages) != len(built):
            raise ValueError("aggregate must be the last stage of a chain")
        self.n = 0
        self._cap = 0

    def add_channel(self) -> int:
        """Allocate a row for a new channel and return it."""
        row = self.n
        self.n += 1
        if self.n > self._cap:
            self._cap = max(16, 2 * self._cap, self.n)
            for st in self.stages:
                st.resize(self._cap)
            if self.aggregate is not None:
                self.aggregate.resize(self._cap)
        return row

    @property
    def parts(self) -> list[Stage | AggregateStage]:
        """Every stage in order, ``aggregate`` last."""
        out: list[Stage | AggregateStage] = [*self.stages]
        if self.aggregate is not None:
            out.append(self.aggregate)
        return out

    def state(self) -> list[dict[str, NDArray[np.generic]]]:
        """Per stage (in order, ``aggregate`` last): its state arrays, rows ``[:n]``."""
        return [st.state(self.n) for st in self.parts]

    def load_state(self, saved: list[dict[str, NDArray[np.generic]]], n: int) -> None:
        """Restore :meth:`state` of a chain of the same config into this fresh chain."""
        if self.n:
            raise StateMismatch("state is restored into fresh chains only")
        parts = self.parts
        if len(saved) != len(parts):
            raise StateMismatch(f"saved {len(saved)} stages, the chain has {len(parts)}")
        cap = max(16, n)
        for st, arrays in zip(parts, saved, strict=True):
            st.load_state(arrays, n, cap)
        self.n, self._cap = n, cap

    def process(self, chan: IDX, ts: I64, val: F64) -> ChainOutput:
        """Run samples (any order, any number per channel) through the chain."""
        outs: list[ChainOutput] = []
        for sel in split_rounds(chan, ts):
            c, t, v = chan[sel], ts[sel], val[sel]
            for st in self.stages:
                keep, v = st.apply(c, t, v)
                if keep is not None and not keep.all():
                    st.dropped += np.bincount(c[~keep], minlength=st.dropped.shape[0])
                    c, t, v = c[keep], t[keep], v[keep]
                    if c.shape[0] == 0:
                        break
            if c.shape[0] == 0:
                continue
            if self.aggregate is None:
                outs.append(ChainOutput(c, t, {"": v}))
            else:
                closed = self.aggregate.apply(c, t, v)
                if closed is not None:
                    outs.append(closed)
        return _concat(outs) if outs else self._empty()

    def _empty(self) -> ChainOutput:
        return ChainOutput.empty(None if self.aggregate is None else self.aggregate.suffixes)

    def flush(self, now_ns: int, *, force: bool = False) -> ChainOutput:
        """Aggregation windows that are due (all open ones if ``force``)."""
        if self.aggregate is None:
            return ChainOutput.empty()
        out = self.aggregate.due(now_ns, self.n, force=force)
        return out if out is not None else self._empty()

    def dropped(self) -> dict[str, I64]:
        """Stage name -> dropped count per channel row (stages of one type summed)."""
        out: dict[str, I64] = {}
        for st in self.parts:
            counts = st.dropped[: self.n]
            out[st.name] = out[st.name] + counts if st.name in out else counts.copy()
        return out


def _concat(outs: list[ChainOutput]) -> ChainOutput:
    if not outs:
        return ChainOutput.empty()
    if len(outs) == 1:
        return outs[0]
    keys = outs[0].columns.keys()
    return ChainOutput(
        np.concatenate([o.chan for o in outs]),
        np.concatenate([o.ts for o in outs]),
        {k: np.concatenate([o.columns[k] for o in outs]) for k in keys},
    )


#: Stage registry: config ``type`` -> (config model, implementation).
STAGES: Final[dict[str, tuple[type[StageConfig], type[Stage] | type[AggregateStage]]]] = {
    "validity": (ValidityConfig, ValidityStage),
    "scale": (ScaleConfig, ScaleStage),
    "deadband": (DeadbandConfig, DeadbandStage),
    "hampel": (HampelConfig, HampelStage),
    "ema": (EmaConfig, EmaStage),
    "aggregate": (AggregateConfig, AggregateStage),
    "rate_limit": (RateLimitConfig, RateLimitStage),
}
