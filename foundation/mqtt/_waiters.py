"""Tasks that wait until the session wakes them: for a state change, a free slot in the
publish window, or a received message. One pattern, three uses in :mod:`._session`."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

__all__ = ["Waiters"]


class Waiters:
    """Futures that tasks await until :meth:`wake_one` or :meth:`wake_all` resolves them.

    A waiter that is cancelled leaves the queue itself; a woken one is already out of it.
    """

    __slots__ = ("_futs",)

    def __init__(self) -> None:
        self._futs: deque[asyncio.Future[None]] = deque()

    def __bool__(self) -> bool:
        return bool(self._futs)

    def __len__(self) -> int:
        return len(self._futs)

    async def wait(self, loop: asyncio.AbstractEventLoop) -> None:
        """Return once woken (never by itself: the caller checks its condition again)."""
        fut = loop.create_future()
        self._futs.append(fut)
        try:
            await fut
        finally:
            with contextlib.suppress(ValueError):
                self._futs.remove(fut)

    def wake_one(self) -> None:
        """Wake the longest waiting task that still waits (first come, first served)."""
        futs = self._futs
        while futs:
            fut = futs.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def wake_all(self) -> None:
        """Wake every task waiting now; a task that waits from here on waits for the next."""
        if not self._futs:
            return
        futs, self._futs = self._futs, deque()
        for fut in futs:
            if not fut.done():
                fut.set_result(None)
