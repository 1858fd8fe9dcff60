"""Each simulated gateway's spool into its in-flight window, by the edge agent's rules.

The rules are :class:`foundation.SendPolicy`, the same object ``edge_agent._sender`` asks::

    spool ─▶ unsent (oldest first) ─▶ window (SendPolicy.free) ─▶ publish_nowait QoS 1
    PUBACK ─▶ SendPolicy.verdict:  delivered  spool.pop, Ledger.acked, KeptBatches.keep
                                   unrouted   gw.unrouted; out again when gw.hold is over
                                   refused    stays spooled; the next connection replays it
    connection lost ─▶ in flight forgotten; the next connection replays the spool

One difference stays, on purpose: the edge agent alternates the newest live batch with the
oldest backlog so that a gateway back from a long outage shows live data at once; a
simulated gateway replays strictly oldest first. The fleet runs thousands of gateways in one
process from an in-memory spool (a seq-ordered dict, no index to query "newest above a
boundary"), and what its runs measure is loss, duplication and catch-up time, which the
order does not change.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections import OrderedDict, deque
from typing import Any, Final

from foundation import SendPolicy
from foundation.mqtt import NO_MATCHING_SUBSCRIBERS, MqttError
from simulators._ledger import Ledger
from simulators.fleet._config import FleetStats
from simulators.fleet._gateway import Gateway, KeptBatches, Spooled
from telemetry import resend_result

__all__ = ["FleetSender"]

#: Resend requests remembered by :meth:`FleetSender.resend_log`.
_RESEND_LOG: Final = 10_000
log: Final = logging.getLogger("simulators")


class FleetSender:
    """Fills the windows of the connected gateways and handles their PUBACKs."""

    def __init__(
        self,
        *,
        policy: SendPolicy,
        ledger: Ledger,
        stats: FleetStats,
        kept: KeptBatches,
        rng: random.Random,
    ) -> None:
        self.policy = policy
        self.ledger = ledger
        self.stats = stats
        self.kept = kept
        self._rng = rng
        #: Gateways with batches to publish; the main loop fills them.
        self.dirty: set[Gateway] = set()
        #: Set when a gateway came up or has new batches (the main loop's wake-up).
        self.wake: asyncio.Event | None = None
        #: The last resend requests that found kept batches: (monotonic time, gateway, seqs
        #: published again), for measurements such as the chaos run's ``repair_s``.
        self.resend_log: deque[tuple[float, str, tuple[int, ...]]] = deque(maxlen=_RESEND_LOG)

    # -- the spool and the connection ------------------------------------------------------
    def spooled(self, gw: Gateway, seq: int) -> None:
        """A new batch in the spool: published when the window has room."""
        if gw.state == "up":
            gw.unsent.append(seq)
            self.dirty.add(gw)

    def connected(self, gw: Gateway, epoch: int) -> None:
        """A new connection: replay the spool, oldest first."""
        gw.epoch = epoch
        gw.inflight.clear()
        gw.unrouted.clear()
        gw.hold.release()
        gw.unsent = deque(gw.spool.keys())
        self.dirty.add(gw)
        if self.wake is not None:
            self.wake.set()

    def disconnected(self, gw: Gateway) -> None:
        gw.inflight.clear()
        gw.unsent.clear()
        gw.unrouted.clear()
        self.dirty.discard(gw)

    def backlog(self, gateways: list[Gateway]) -> int:
        """Batches waiting to be acknowledged across connected gateways."""
        return sum(
            len(g.unsent) + len(g.inflight) + len(g.unrouted) for g in gateways if g.state == "up"
        )

    # -- the window ------------------------------------------------------------------------
    def fill(self, gw: Gateway) -> None:
        session = gw.session
        if session is None or gw.state != "up":
            return
        if gw.unrouted and gw.hold.ready(time.monotonic()):
            # The hold is over: the batches delivered to nobody go out again, in seq order.
            gw.unsent = deque(sorted({*gw.unsent, *gw.unrouted}))
            gw.unrouted.clear()
            gw.hold.release()
        free = self.policy.free(len(gw.inflight), session.window)
        while gw.unsent and free > 0:
            seq = gw.unsent.popleft()
            entry = gw.spool.get(seq)
            if entry is None:
                continue
            try:
                fut = session.publish_nowait(gw.topic, entry.payload, qos=1)
            except MqttError:
                gw.unsent.appendleft(seq)  # lost meanwhile: disconnected/connected take over
                break
            free -= 1
            gw.inflight.add(seq)
            fut.add_done_callback(functools.partial(self._on_puback, gw, seq, gw.epoch))
            self.ledger.published(gw.id, replay=entry.sent > 0)
            entry.sent += 1

    def fill_dirty(self) -> None:
        while self.dirty:
            self.fill(self.dirty.pop())

    def release_holds(self, gateways: list[Gateway], now: float) -> None:
        """Gateways whose 0x10 hold is over publish those batches again."""
        for gw in gateways:
            if gw.unrouted and gw.hold.ready(now):
                self.fill(gw)

    def _on_puback(self, gw: Gateway, seq: int, epoch: int, fut: asyncio.Future[int]) -> None:
        if epoch != gw.epoch or fut.cancelled() or fut.exception() is not None:
            return  # that connection is gone: the spool replays the batch on the next one
        gw.inflight.discard(seq)
        rc = fut.result()
        self.stats.no_subscribers += rc == NO_MATCHING_SUBSCRIBERS
        verdict = self.policy.verdict(rc)
        if verdict == "unrouted":
            # Acked, but delivered to nobody (no ingest subscription): not stored anywhere.
            gw.unrouted.append(seq)
            gw.hold.hold(time.monotonic(), self._rng)
        elif verdict == "refused":
            self.stats.publish_refused += 1  # stays spooled: the next connection replays it
        else:
            gw.hold.delivered()
            entry = gw.spool.pop(seq, None)
            if entry is not None:
                if not entry.acked:
                    entry.acked = True
                    self.ledger.acked(gw.id, entry.readings)
                self.kept.keep(gw, entry)
        self.fill(gw)

    # -- resend ------------------------------------------------------------------------------
    def resend(self, gw: Gateway, seqs: list[int]) -> dict[str, Any]:
        """Publish again the held batches with these seqs (the ``resend`` command's work,
        on the fleet's loop): kept ones go out first with their original seq and bytes.
        Returns the answer's ``result`` (:func:`telemetry.resend_result`)."""
        requeued: list[Spooled] = []
        missing: list[int] = []
        waiting = 0
        for seq in seqs:
            if seq in gw.spool:
                waiting += 1
                continue
            entry = self.kept.take(gw, seq)
            if entry is None:
                missing.append(seq)
                continue
            requeued.append(entry)
        if requeued:
            self.resend_log.append((time.monotonic(), gw.id, tuple(e.seq for e in requeued)))
            for entry in requeued:
                gw.spool[entry.seq] = entry
            # Keep the spool in seq order: a reconnect replays it oldest first.
            gw.spool = OrderedDict(sorted(gw.spool.items()))
            if gw.state == "up":
                gw.unsent.extendleft(reversed([e.seq for e in requeued]))
                self.fill(gw)
        stats = self.stats
        stats.resend_requests += 1
        stats.resend_requeued += len(requeued)
        stats.resend_waiting += waiting
        stats.resend_missing += len(missing)
        log.info(
            "resend requested",
            extra={"gateway": gw.id, "requested": len(seqs), "requeued": len(requeued),
                   "waiting": waiting, "missing": len(missing)},
        )  # fmt: skip
        return resend_result(requeued=len(requeued), waiting=waiting, missing=missing)
