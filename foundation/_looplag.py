"""Event-loop lag: how late the loop runs a callback that was due, as a service sees it.

A task sleeps ``interval`` seconds again and again; how much later than asked it wakes up
is the time something else held the loop (a long synchronous step, a GC pause, a burst of
callbacks). Every async service observes it into a Prometheus histogram
(``<service>_event_loop_lag_seconds``), so an operator sees on ``/metrics`` the same tail a
benchmark sees. Cost: one wake-up per interval (10 per second by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Final

__all__ = ["LAG_BUCKETS", "LoopLagMonitor"]

#: Histogram buckets (seconds): from a millisecond to five seconds.
LAG_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class LoopLagMonitor:
    """Measures the running loop's lag into ``observe`` (e.g. a histogram's ``observe``).

    >>> monitor = LoopLagMonitor(histogram.observe)       # doctest: +SKIP
    >>> monitor.start()   # in the loop; monitor.stop() (or await monitor.aclose()) at the end
    """

    def __init__(self, observe: Callable[[float], object], *, interval: float = 0.1) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self._observe = observe
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        #: the largest lag seen (seconds)
        self.max_lag = 0.0

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="event-loop-lag"
            )

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        interval = self._interval
        clock = time.perf_counter
        while True:
            asked = clock()
            await asyncio.sleep(interval)
            lag = max(0.0, clock() - asked - interval)
            if lag > self.max_lag:
                self.max_lag = lag
            self._observe(lag)
