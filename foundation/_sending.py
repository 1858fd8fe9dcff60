"""The sending rules of a gateway's uplink: one policy for the edge agent and the simulated
fleet.

Pure: no I/O, no clock and no randomness of its own (the caller passes ``now`` and, if it
wants a seeded schedule, its ``random.Random``). Both senders keep their own spool (SQLite on
the gateway, a dict per simulated gateway) and ask this policy what to do::

    spool ──unsent, oldest first──▶ window: SendPolicy.free(in flight, session window)
                                      │ publish QoS 1, tracked until its PUBACK
    PUBACK reason ─▶ SendPolicy.verdict(reason):
        "delivered"  < 0x80 (and 0x10 when retry_unrouted is off): leaves the spool
        "unrouted"   0x10 No matching subscribers: the broker took it and gave it to nobody;
                     it stays in the spool and goes out again when UnroutedHold says so
        "refused"    >= 0x80: stays in the spool; the next connection replays it
    lost with its connection (no PUBACK): stays in the spool; the next connection replays it

:class:`UnroutedHold` is the 0x10 schedule: a burst of 0x10 answers starts one hold (capped,
jittered, doubling: 0.2 s up to 5 s by default); the batches waiting on it go out again when
it ends; a delivered batch makes the next hold short again. Nobody subscribing usually means
ingest's shared subscription is not back yet after a broker restart (docs/operations.md), and
every gateway sees it at the same moment: the jitter keeps them from retrying in lock-step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Final, Literal

from foundation._backoff import Backoff

__all__ = ["UNROUTED_BACKOFF", "PubackVerdict", "SendPolicy", "UnroutedHold"]

#: MQTT v5 PUBACK reason 0x10. The same value as ``foundation.mqtt.NO_MATCHING_SUBSCRIBERS``,
#: written here because ``foundation.mqtt`` builds on this package, not the other way round.
_NO_MATCHING_SUBSCRIBERS: Final = 0x10

PubackVerdict = Literal["delivered", "unrouted", "refused"]

#: The 0x10 schedule: 0.2 s doubling to 5 s, each between half and all of that.
UNROUTED_BACKOFF: Final = Backoff(initial=0.2, maximum=5.0, multiplier=2.0, jitter=0.5)


@dataclass(frozen=True, kw_only=True, slots=True)
class SendPolicy:
    """How many batches may wait for a PUBACK, and what a PUBACK reason means."""

    #: Batches published and not yet acknowledged, at most (``inflight_window``).
    window: int
    #: 0x10 keeps the batch and sends it again. Off only for load runs against a bare broker,
    #: where nobody subscribes and what the broker took is counted as delivered.
    retry_unrouted: bool = True
    unrouted_backoff: Backoff = field(default=UNROUTED_BACKOFF)

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")

    def free(self, inflight: int, session_window: int | None = None) -> int:
        """Batches that may be published now: the window (and the session's own window,
        the broker's Receive Maximum) less those in flight."""
        window = self.window if session_window is None else min(self.window, session_window)
        return max(0, window - inflight)

    def verdict(self, reason: int) -> PubackVerdict:
        """What a PUBACK reason code means for the batch it acknowledges."""
        if reason == _NO_MATCHING_SUBSCRIBERS and self.retry_unrouted:
            return "unrouted"
        return "delivered" if reason < 0x80 else "refused"

    def unrouted_hold(self) -> UnroutedHold:
        """A fresh 0x10 schedule for one sender."""
        return UnroutedHold(self.unrouted_backoff)


class UnroutedHold:
    """When batches acknowledged with 0x10 go out again (one per sender)."""

    __slots__ = ("_attempt", "_backoff", "until")

    def __init__(self, backoff: Backoff = UNROUTED_BACKOFF) -> None:
        self._backoff = backoff
        self._attempt = 0
        #: When the waiting batches go out again; ``None``: no hold.
        self.until: float | None = None

    @property
    def holding(self) -> bool:
        return self.until is not None

    @property
    def attempt(self) -> int:
        """Holds since the last delivery (1 after the first)."""
        return self._attempt

    def hold(self, now: float, rng: random.Random | None = None) -> bool:
        """A batch came back with 0x10: start a hold unless one runs (a burst counts once).
        True when a hold began."""
        if self.until is not None:
            return False
        self.until = now + self._backoff.delay(self._attempt, rng)
        self._attempt += 1
        return True

    def ready(self, now: float) -> bool:
        """The hold is over: send the waiting batches again (then :meth:`release`)."""
        return self.until is not None and now >= self.until

    def release(self) -> None:
        """The waiting batches went out again (or a new connection re-reads them)."""
        self.until = None

    def delivered(self) -> None:
        """A batch reached a subscriber: the next hold starts short again."""
        self._attempt = 0
