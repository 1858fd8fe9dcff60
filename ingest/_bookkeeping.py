"""This worker's view of each gateway's seq stream (last seq, gaps, replays, last seen).

The stored bookkeeping points (``ingest_batch``, one per batch, written with its readings) and
the completeness query are the storage contract in :mod:`telemetry` (``bookkeeping_line``,
``completeness_query``). With several workers in a share group each sees only its share of a
gateway's batches, so local gaps are exact only for a single worker; the stored points are the
global truth.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from telemetry import BOOKKEEPING_MEASUREMENT, bookkeeping_line, completeness_query

__all__ = ["BOOKKEEPING_MEASUREMENT", "GatewayBook", "bookkeeping_line", "completeness_query"]

_RECENT: Final = 256


class _Gateway:
    __slots__ = ("gaps", "last_seen", "last_seq", "recent", "replays")

    def __init__(self) -> None:
        self.last_seq = -1
        self.last_seen = 0.0
        self.gaps = 0
        self.replays = 0
        self.recent: deque[int] = deque(maxlen=_RECENT)


class GatewayBook:
    """This worker's view of each gateway's seq stream."""

    def __init__(self) -> None:
        self._gateways: dict[str, _Gateway] = {}

    def observe(self, gateway: str, seq: int, *, dup: bool, now: float) -> tuple[int, bool]:
        """Record a batch; return (new gaps it reveals, whether it is a replay)."""
        state = self._gateways.get(gateway)
        if state is None:
            state = self._gateways[gateway] = _Gateway()
        state.last_seen = now
        gaps = 0
        replay = dup
        if state.last_seq < 0:
            state.last_seq = seq
        elif seq > state.last_seq:
            gaps = seq - state.last_seq - 1
            state.last_seq = seq
        elif seq in state.recent:
            replay = True
        if replay:
            state.replays += 1
        state.gaps += gaps
        state.recent.append(seq)
        return gaps, replay

    def last_seq(self, gateway: str) -> int | None:
        state = self._gateways.get(gateway)
        return None if state is None else state.last_seq

    def state(self, gateway: str) -> tuple[int, int, int, float]:
        """(last seq, gaps, replays, last seen) of one gateway already observed."""
        s = self._gateways[gateway]
        return s.last_seq, s.gaps, s.replays, s.last_seen

    def snapshot(self) -> dict[str, tuple[int, int, int, float]]:
        """gateway -> (last seq, gaps, replays, last seen)."""
        return {
            gw: (s.last_seq, s.gaps, s.replays, s.last_seen) for gw, s in self._gateways.items()
        }
