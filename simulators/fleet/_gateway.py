"""One simulated gateway's state, and the delivered batches the fleet keeps for ``resend``.

No I/O. A gateway's batches move like this::

    spool (unacked) ──PUBACK──▶ kept (seq → the same bytes) ──older than keep_delivered_s,
         ▲                         │                          or over the byte budget──▶ gone
         └──── resend(seqs) ◀──────┘  published again first, same seq, same payload

:class:`KeptBatches` holds the kept ones of every gateway under one byte budget, oldest
delivery forgotten first.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Final, Literal

from foundation import UnroutedHold
from foundation.mqtt import MqttSession
from simulators._hostile import HostileCase
from simulators.fleet._config import FleetStats

__all__ = ["Gateway", "KeptBatches", "Spooled"]

#: What a kept batch costs besides its payload (the entry, its index, the order queue).
_KEPT_OVERHEAD: Final = 200


@dataclass(slots=True)
class Spooled:
    seq: int
    payload: bytes
    readings: int
    sent: int = 0
    #: Counted in the ledger as acknowledged (a resend is not counted again).
    acked: bool = False
    #: When it was last acknowledged (monotonic): its place in the kept order.
    kept_at: float = 0.0


@dataclass(slots=True, eq=False)
class Gateway:
    index: int
    id: str
    topic: str
    status_topic: str
    health_topic: str
    cmd_topic: str
    #: The 0x10 schedule of this gateway (:class:`foundation.SendPolicy`).
    hold: UnroutedHold
    session: MqttSession | None = None
    state: Literal["down", "connecting", "up"] = "down"
    #: The session epoch of the connection the in-flight batches went out on.
    epoch: int = 0
    spool: OrderedDict[int, Spooled] = field(default_factory=OrderedDict)
    #: Acknowledged batches held for ``resend`` (seq -> the same entry).
    kept: dict[int, Spooled] = field(default_factory=dict)
    unsent: deque[int] = field(default_factory=deque)
    inflight: set[int] = field(default_factory=set)
    #: Acked with 0x10 (delivered to nobody): sent again when ``hold`` is over.
    unrouted: list[int] = field(default_factory=list)
    next_seq: int = 0
    uplink_lost: bool = False
    rebooting: bool = False
    #: Under a ``hostile`` fault: the cases it sends in turn instead of honest readings.
    hostile_cases: tuple[HostileCase, ...] = ()
    hostile_turn: int = 0
    boot_mono: float = 0.0
    #: Connect failures and refusals of the session already counted in FleetStats.
    failures_seen: int = 0
    #: Set to make the gateway's task look at its state (fault, stop).
    wake: asyncio.Event | None = None

    @property
    def down(self) -> bool:
        """Cut off by a fault (uplink lost, or rebooting)."""
        return self.uplink_lost or self.rebooting


class KeptBatches:
    """Acknowledged batches of every gateway, held for ``keep_s`` within ``budget_bytes``
    (payload plus about 200 bytes each); the counters are ``stats.kept_*``."""

    def __init__(self, *, keep_s: float, budget_bytes: int, stats: FleetStats) -> None:
        self.keep_s = keep_s
        self.budget_bytes = budget_bytes
        self.stats = stats
        #: Kept batches in the order they were acknowledged: (kept_at, gateway, seq, entry);
        #: an item whose entry was sent again since is stale and skipped.
        self._order: deque[tuple[float, Gateway, int, Spooled]] = deque()

    @staticmethod
    def size(entry: Spooled) -> int:
        return len(entry.payload) + _KEPT_OVERHEAD

    def keep(self, gw: Gateway, entry: Spooled) -> None:
        """An acknowledged batch: hold it for ``keep_s`` within the budget."""
        size = self.size(entry)
        if self.keep_s <= 0 or size > self.budget_bytes:
            return
        now = time.monotonic()
        stats = self.stats
        while stats.kept_bytes + size > self.budget_bytes and self._order:
            stats.kept_evicted += self._forget_oldest()
        entry.kept_at = now
        gw.kept[entry.seq] = entry
        self._order.append((now, gw, entry.seq, entry))
        stats.kept_batches += 1
        stats.kept_bytes += size

    def take(self, gw: Gateway, seq: int) -> Spooled | None:
        """Take a kept batch out to publish it again (``None``: not held)."""
        entry = gw.kept.pop(seq, None)
        if entry is None:
            return None
        entry.kept_at = 0.0  # its item in the kept order is stale now
        self.stats.kept_batches -= 1
        self.stats.kept_bytes -= self.size(entry)
        return entry

    def forget_expired(self, now: float) -> None:
        """Forget batches kept longer than ``keep_s``."""
        cutoff = now - self.keep_s
        order = self._order
        while order and order[0][0] <= cutoff:
            self._forget_oldest()

    def _forget_oldest(self) -> int:
        """Forget the oldest kept batch; 1 if it was still held, 0 for a stale item."""
        kept_at, gw, seq, entry = self._order.popleft()
        if entry.kept_at != kept_at or gw.kept.get(seq) is not entry:
            return 0  # sent again since: a newer item stands for it
        del gw.kept[seq]
        self.stats.kept_batches -= 1
        self.stats.kept_bytes -= self.size(entry)
        return 1
