"""The edge agent's event-loop lag, kept as histogram counts and rendered at each scrape.

The agent runs inputs, processors, the spool and the uplink on one asyncio loop; a long
synchronous step (a spool commit on a slow SD card, a checkpoint, a burst of readings) delays
everything else. :class:`foundation.LoopLagMonitor` wakes every 0.1 s and observes how late it
woke into :class:`LoopLagHistogram`; ``/metrics`` shows it as
``edge_event_loop_lag_seconds`` (the same buckets as the ingest worker's and the API's).
No prometheus_client import until the first scrape.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import TYPE_CHECKING

from foundation import LAG_BUCKETS

if TYPE_CHECKING:
    from prometheus_client.core import Metric

__all__ = ["LoopLagHistogram"]


class LoopLagHistogram:
    """How late the agent's event loop ran a callback that was due: observations by bucket.

    ``observe`` is :class:`foundation.LoopLagMonitor`'s sink (on the loop); the collector
    renders it as ``edge_event_loop_lag_seconds`` at each scrape. A stalled loop (a long
    synchronous step: a spool commit on a slow SD card, a checkpoint) shows here before
    systemd's watchdog fires.
    """

    __slots__ = ("_bounds", "_counts", "_sum")

    def __init__(self, buckets: Sequence[float] = LAG_BUCKETS) -> None:
        self._bounds = tuple(sorted(buckets))
        self._counts = [0] * (len(self._bounds) + 1)  # the last: above every bound (+Inf)
        self._sum = 0.0

    def observe(self, lag: float) -> None:
        self._counts[bisect.bisect_left(self._bounds, lag)] += 1
        self._sum += lag

    @property
    def count(self) -> int:
        return sum(self._counts)

    def metric(self, gateway: str) -> Metric:
        """The histogram as a Prometheus family (prometheus_client is imported here, at the
        first scrape, like the rest of the agent's metrics)."""
        from prometheus_client.core import HistogramMetricFamily

        counts = list(self._counts)
        cumulative: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip((*map(repr, self._bounds), "+Inf"), counts, strict=True):
            total += n
            cumulative.append((bound, total))
        h = HistogramMetricFamily(
            "edge_event_loop_lag_seconds",
            "How late the agent's event loop woke a task that was due (0.1 s probes): "
            "time something else held the loop",
            labels=["gateway"],
        )
        h.add_metric([gateway], cumulative, sum_value=self._sum)
        return h
