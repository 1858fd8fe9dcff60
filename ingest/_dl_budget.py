"""The dead-letter budget: how many full dead-letter records one gateway may make.

::

    refusal ──▶ DeadLetterBudget.admit(gateway, kind)
                 │  the gateway's token bucket: ``burst`` records at once, ``rate`` a second
                 ├─ a token ──▶ True: the full record (point, notification, stream record)
                 └─ none ────▶ False: counted in the gateway's open window (count, kinds,
                               first and last seen); ``summary_every`` s after the window
                               opened, due() hands it out: one compact summary point

Without it, a gateway publishing garbage as fast as its link allows makes one dead-letter
point of up to 64 KiB per message: the database grows at the hostile gateway's rate and the
writes take capacity from the honest gateways. With it, one gateway costs at most
``burst + rate x t`` records, plus one summary per window.

Keys are the topic's gateway; refusals whose topic names no gateway share the key ``-``.
Memory is bounded: at most ``max_gateways`` buckets, the least recently refused dropped first.
A full table gives a new gateway the tokens the dropped bucket had (a long idle one: a full
burst), so a stream of invented gateway ids gets no fresh burst per id; the open windows of
dropped buckets are merged into one window under the key ``*``, so neither is a count lost
nor does each id cost a summary. Only refusals come here: valid messages never touch it.

No I/O; both clocks are injected (monotonic for the buckets and windows, wall-clock
nanoseconds for the first and last seen times a summary reports).
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from ingest._config import DeadLetterConfig

__all__ = ["DROPPED", "NO_GATEWAY", "DeadLetterBudget", "Suppressed"]

log = logging.getLogger("ingest")

#: The key (and the ``gateway`` tag) of refusals whose topic names no gateway.
NO_GATEWAY: Final = "-"
#: The summary key of the windows of dropped buckets.
DROPPED: Final = "*"
#: Distinct kinds a summary lists; the rest are counted under ``other``.
_MAX_KINDS: Final = 16
_LOG_EVERY_S: Final = 60.0
#: Log lines a minute over all gateways (a stream of invented ids is many gateways).
_LOGS_PER_MINUTE: Final = 20


@dataclass(frozen=True, slots=True)
class Suppressed:
    """One gateway's records left out in one window: what its summary point says."""

    gateway: str
    count: int
    kinds: dict[str, int]
    #: wall clock (Unix ns) of the first and the last record left out
    first_ns: int
    last_ns: int


class _Bucket:
    __slots__ = ("count", "first_ns", "kinds", "last_ns", "logged", "opened", "stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp
        #: records left out in the open window (0: no window open)
        self.count = 0
        self.kinds: dict[str, int] = {}
        self.first_ns = 0
        self.last_ns = 0
        self.opened = 0.0
        self.logged = -math.inf


class DeadLetterBudget:
    """Token buckets per gateway, and the windows of what was left out."""

    __slots__ = (
        "_buckets", "_burst", "_clock", "_every", "_logs", "_max", "_open", "_rate",
        "_wall_ns", "_worker", "next_due",
    )

    def __init__(
        self,
        *,
        rate: float,
        burst: int,
        max_gateways: int = 10_000,
        summary_every: float = 60.0,
        worker: str = "",
        clock: Callable[[], float] = time.monotonic,
        wall_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        if rate <= 0 or burst < 1 or max_gateways < 1 or summary_every <= 0:
            raise ValueError(
                f"a budget needs rate > 0, burst >= 1, max_gateways >= 1 and "
                f"summary_every > 0 (got {rate}, {burst}, {max_gateways}, {summary_every})"
            )
        self._rate = rate
        self._burst = float(burst)
        self._max = max_gateways
        self._every = summary_every
        self._worker = worker
        self._clock = clock
        self._wall_ns = wall_ns
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        #: gateways with an open window, in the order their windows opened (so by due time)
        self._open: dict[str, _Bucket] = {}
        #: (minute started, lines logged in it, lines left out)
        self._logs = (-math.inf, 0, 0)
        #: monotonic time the next summary is due (``inf``: none pending); a plain attribute,
        #: read once per turn of the batch loop
        self.next_due = math.inf

    @classmethod
    def configured(cls, config: DeadLetterConfig, *, worker: str) -> DeadLetterBudget | None:
        """The budget ``deadletters.per_gateway`` asks for; ``None`` when it is off."""
        b = config.budget
        if b is None:
            return None
        return cls(rate=b.rate, burst=b.burst, max_gateways=b.max_gateways,
                   summary_every=b.summary_every, worker=worker)

    def __len__(self) -> int:
        """Gateways with a bucket (at most ``max_gateways``)."""
        return len(self._buckets)

    def admit(self, gateway: str | None, kind: str) -> bool:
        """Whether ``gateway`` may make one more full record now (it spends a token);
        ``False``: the record is left out and counted in the gateway's window."""
        key = gateway or NO_GATEWAY
        now = self._clock()
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            tokens = self._drop_oldest(now) if len(buckets) >= self._max else self._burst
            bucket = buckets[key] = _Bucket(tokens, now)
        else:
            buckets.move_to_end(key)
            bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.stamp) * self._rate)
            bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        self._suppress(key, bucket, kind, now)
        return False

    def due(self, *, force: bool = False) -> list[Suppressed]:
        """The windows due now (all open ones with ``force``, at shutdown), closed."""
        out: list[Suppressed] = []
        now = self._clock()
        opened = self._open
        while opened:
            key, bucket = next(iter(opened.items()))
            if not force and bucket.opened + self._every > now:
                break
            del opened[key]
            out.append(self._close(key, bucket, now))
        self._refresh()
        return out

    # -- internals --------------------------------------------------------------------------
    def _open_window(self, key: str, bucket: _Bucket, now: float, wall: int) -> None:
        bucket.opened = now
        bucket.first_ns = wall
        bucket.kinds = {}
        self._open[key] = bucket
        if self.next_due == math.inf:
            self.next_due = now + self._every

    def _suppress(self, key: str, bucket: _Bucket, kind: str, now: float) -> None:
        wall = self._wall_ns()
        if bucket.count == 0:
            self._open_window(key, bucket, now, wall)
            if (unlogged := self._may_log(bucket, now)) is not None:
                log.warning(
                    "gateway over its dead-letter budget: records left out, a summary follows",
                    extra={"worker": self._worker, "gateway": key, "kind": kind,
                           "burst": int(self._burst), "rate_per_s": self._rate,
                           "summary_in_s": self._every, "unlogged": unlogged},
                )
        bucket.count += 1
        bucket.last_ns = wall
        _add_kind(bucket.kinds, kind, 1)

    def _close(self, key: str, bucket: _Bucket, now: float) -> Suppressed:
        summary = Suppressed(key, bucket.count, bucket.kinds, bucket.first_ns, bucket.last_ns)
        bucket.count = 0
        bucket.kinds = {}
        if (unlogged := self._may_log(bucket, now)) is not None:
            log.warning(
                "dead-letter records left out over the gateway's budget",
                extra={"worker": self._worker, "gateway": key, "suppressed": summary.count,
                       "kinds": summary.kinds, "unlogged": unlogged},
            )
        return summary

    def _may_log(self, bucket: _Bucket, now: float) -> int | None:
        """Whether to log about ``bucket`` now: at most once a minute per gateway and
        :data:`_LOGS_PER_MINUTE` in all. ``None``: not now; else the lines left out before."""
        if now - bucket.logged < _LOG_EVERY_S:
            return None
        started, logged, unlogged = self._logs
        if now - started >= 60.0:
            started, logged = now, 0
        if logged >= _LOGS_PER_MINUTE:
            self._logs = (started, logged, unlogged + 1)
            return None
        bucket.logged = now
        self._logs = (started, logged + 1, 0)
        return unlogged

    def _drop_oldest(self, now: float) -> float:
        """Drop the least recently refused bucket; return the tokens it had by now. Its open
        window, if any, goes into the window of dropped buckets."""
        key, old = self._buckets.popitem(last=False)
        if old.count:
            del self._open[key]
            merged = self._open.get(DROPPED)
            if merged is None:
                merged = _Bucket(0.0, now)
                self._open_window(DROPPED, merged, now, old.first_ns)
            merged.count += old.count
            merged.first_ns = min(merged.first_ns, old.first_ns)
            merged.last_ns = max(merged.last_ns, old.last_ns)
            for kind, n in old.kinds.items():
                _add_kind(merged.kinds, kind, n)
            self._refresh()
        return min(self._burst, old.tokens + (now - old.stamp) * self._rate)

    def _refresh(self) -> None:
        if self._open:
            self.next_due = next(iter(self._open.values())).opened + self._every
        else:
            self.next_due = math.inf


def _add_kind(kinds: dict[str, int], kind: str, n: int) -> None:
    if kind not in kinds and len(kinds) >= _MAX_KINDS:
        kind = "other"
    kinds[kind] = kinds.get(kind, 0) + n
