"""The stage interface: typed config, per-channel state in row-indexed numpy arrays, and
one method per round::

    class Stage:
        name: ClassVar[str]                       # the config ``type``
        state_arrays: ClassVar[tuple[str, ...]]   # the stage's whole memory, one row per channel
        def resize(self, n) -> None               # room for n channels
        def apply(self, chan, ts, val) -> (keep-mask | None, values)

``chan`` holds each channel at most once per call (a *round*), so a stage is a handful of
array operations on the rows of the channels present. :class:`AggregateStage` (terminal)
has the same state interface but turns samples into window statistics.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Final

import numpy as np
from numpy.typing import NDArray

from edge_agent._model import FrozenModel

__all__ = [
    "BOOL",
    "F64",
    "I64",
    "I64_MAX",
    "IDX",
    "NS",
    "ChainOutput",
    "Stage",
    "StageConfig",
    "StateMismatch",
    "Stateful",
    "grow",
]

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
IDX = NDArray[np.intp]
BOOL = NDArray[np.bool_]

NS: Final = 1_000_000_000
I64_MAX: Final = 2**63 - 1


class StageConfig(FrozenModel):
    """Base of every stage config: frozen, unknown keys refused."""


def grow(a: NDArray[np.generic], n: int, fill: float | int | bool) -> NDArray[np.generic]:
    """``a`` with room for ``n`` rows (doubling), new rows set to ``fill``."""
    if a.shape[0] >= n:
        return a
    cap = max(n, 2 * a.shape[0], 16)
    out = np.full((cap, *a.shape[1:]), fill, dtype=a.dtype)
    out[: a.shape[0]] = a
    return out


class StateMismatch(ValueError):
    """Saved stage state that does not fit the stage (other dtype, shape or fields)."""


class Stateful:
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


class Stage(Stateful, ABC):
    """A filter stage: per round, a keep-mask and the (possibly changed) values."""

    def __init__(self) -> None:
        self.dropped: I64 = np.zeros(0, dtype=np.int64)

    def resize(self, n: int) -> None:
        """Make room for ``n`` channels."""
        self.dropped = grow(self.dropped, n, 0)  # type: ignore[assignment]

    @abstractmethod
    def apply(self, chan: IDX, ts: I64, val: F64) -> tuple[BOOL | None, F64]:
        """Process one round (``chan`` unique); ``None`` as mask keeps everything."""


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
