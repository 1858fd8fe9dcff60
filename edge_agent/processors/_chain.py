"""A chain: the stages of one processor rule, run on every channel the rule matched.

::

    samples of a tick ──▶ split into rounds ──▶ [validity] ─▶ [scale] ─▶ [hampel] ─▶
    (chan, ts, value)     (k-th sample of        [deadband] ─▶ [ema] ─▶ [rate_limit] ─▶ [aggregate]
                           every channel)        each stage: keep-mask + values for the round

A *round* holds at most one sample per channel, so a stage is a handful of array operations
on the rows of the channels present: no Python loop per sample. Stages run in the order the
config lists them; ``aggregate`` closes a chain (it turns samples into window statistics).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from edge_agent.processors._aggregate import AggregateStage
from edge_agent.processors._base import (
    F64,
    I64,
    IDX,
    ChainOutput,
    Stage,
    StageConfig,
    StateMismatch,
)
from edge_agent.processors._registry import build_stage

__all__ = ["Chain", "split_rounds"]


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


class Chain:
    """The stages of one config rule, with the state of every channel the rule matched."""

    def __init__(self, specs: list[StageConfig]) -> None:
        built = [build_stage(s) for s in specs]
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
