"""The event-loop lag monitor sees a loop held by a synchronous step, and little otherwise."""

from __future__ import annotations

import asyncio
import time

from foundation._looplag import LoopLagMonitor


def test_a_blocked_loop_shows_as_lag_and_an_idle_one_does_not() -> None:
    seen: list[float] = []

    async def main() -> None:
        monitor = LoopLagMonitor(seen.append, interval=0.02)
        monitor.start()
        await asyncio.sleep(0.3)
        idle = list(seen)
        time.sleep(0.25)  # noqa: ASYNC251 - the synchronous step holding the loop
        await asyncio.sleep(0.1)
        await monitor.aclose()
        assert idle
        assert max(idle) < 0.2
        assert monitor.max_lag >= 0.2

    asyncio.run(main())
    assert max(seen) >= 0.2
