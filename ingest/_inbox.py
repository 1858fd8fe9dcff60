"""The hand-off between a message source and the worker's batch loop.

Both sources (the MQTT shared subscription, :mod:`ingest._session`, and the JetStream
consumer, :mod:`ingest._jetstream`) put what they receive into :attr:`Inbox.inbox`; the batch
loop takes from it. The source waits for room above the high-water mark (half the window),
the loop lets it go on below the low-water mark, and a loop waiting for messages is woken by
the next one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib

from foundation.mqtt import Message

__all__ = ["Inbox"]


class Inbox:
    """Messages handed over and not yet taken by the worker, in receive order."""

    def __init__(self, window: int) -> None:
        self.inbox: collections.deque[Message] = collections.deque()
        self._high_water = max(1, window - window // 2)
        self._low_water = max(1, self._high_water // 2)
        self._idle = False
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    def _put(self, message: Message) -> None:
        """Hand ``message`` to the batch loop (waking it if it waits)."""
        self.inbox.append(message)
        if self._idle:
            self._idle = False
            self._wake.set()

    async def _wait_for_room(self) -> None:
        """Wait until the batch loop took the inbox below its low-water mark."""
        self._room.clear()
        await self._room.wait()

    def make_room(self) -> None:
        """Let the source go on once the inbox is below the low-water mark."""
        if not self._room.is_set() and len(self.inbox) < self._low_water:
            self._room.set()

    def wake(self) -> None:
        """End a :meth:`wait_for_messages` now (the worker is stopping)."""
        self._wake.set()
        self._room.set()

    async def wait_for_messages(self, timeout: float | None) -> None:  # noqa: ASYNC109
        """Return when a message is in the inbox, after ``timeout`` s, or on :meth:`wake`."""
        if self.inbox:
            return
        self._wake.clear()
        self._idle = True
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
        finally:
            self._idle = False
