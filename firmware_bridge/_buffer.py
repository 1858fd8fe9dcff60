"""The hand-off between a link's receive task and the consumer of its readings."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Iterable

from firmware_bridge._errors import LinkError
from telemetry import Reading

__all__ = ["ReadingBuffer"]


class ReadingBuffer:
    """A bounded FIFO of readings: oldest dropped (and counted) when the consumer lags."""

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.dropped = 0
        self._items: deque[Reading] = deque()
        self._ready = asyncio.Event()
        self._failure: BaseException | None = None
        self._closed = False

    def push(self, readings: Iterable[Reading]) -> None:
        items = self._items
        items.extend(readings)
        overflow = len(items) - self.limit
        for _ in range(max(0, overflow)):
            items.popleft()
            self.dropped += 1
        self._ready.set()

    def fail(self, exc: BaseException) -> None:
        self._failure = exc
        self._ready.set()

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    async def __aiter__(self) -> AsyncIterator[Reading]:
        items = self._items
        while True:
            while items:
                yield items.popleft()
            if self._failure is not None:
                raise LinkError(self.name, "receive loop failed") from self._failure
            if self._closed:
                return
            self._ready.clear()
            await self._ready.wait()
