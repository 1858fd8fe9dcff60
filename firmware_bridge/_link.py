"""The skeleton every serial link shares: transport, receive task, reading buffer.

::

    SerialTransport ──chunks──▶ _rx_loop ──▶ _on_chunk (decoder + session, per link kind)
                                                │
                         readings() ◀── ReadingBuffer ◀──┘

A subclass supplies ``_reset`` (drop partial input after a reconnect: bytes of a frame cut
by an unplug never complete) and ``_on_chunk``; the base owns the task's lifetime and makes
a failure of the receive loop visible to ``readings()`` consumers instead of going silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import types
from collections.abc import AsyncIterator, Callable
from typing import Self

from firmware_bridge._buffer import ReadingBuffer
from firmware_bridge._config import SerialConfig
from firmware_bridge._errors import LinkClosed
from firmware_bridge._transport import LinkState, SerialTransport
from telemetry import Reading

__all__ = ["SerialReadingLink"]


class SerialReadingLink:
    """Base of links that decode a serial byte stream into readings."""

    #: Last part of the receive task's name: ``firmware_bridge[<link>].<task>``.
    rx_task_name = "rx"

    def __init__(
        self,
        serial: SerialConfig,
        *,
        max_pending_readings: int,
        on_state: Callable[[LinkState], None] | None = None,
    ) -> None:
        self.name = serial.label
        self.transport = SerialTransport(serial, on_state=on_state)
        self._buffer = ReadingBuffer(self.name, max_pending_readings)
        self._rx_task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self.transport.__aenter__()
        self._rx_task = asyncio.create_task(
            self._rx_loop(), name=f"firmware_bridge[{self.name}].{self.rx_task_name}"
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        task, self._rx_task = self._rx_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.transport.aclose()
        self._on_close()
        self._buffer.close()

    @property
    def state(self) -> LinkState:
        return self.transport.state

    def readings(self) -> AsyncIterator[Reading]:
        """Readings as they arrive, until the link is closed."""
        return aiter(self._buffer)

    # -- for subclasses ------------------------------------------------------------------

    def _reset(self) -> None:
        """Forget partial input; called when the link comes (back) up."""

    async def _on_chunk(self, chunk: bytes) -> None:
        raise NotImplementedError

    def _on_close(self) -> None:
        """Release what the subclass holds (pending commands ...)."""

    async def _rx_loop(self) -> None:
        try:
            was_up = False
            while True:
                try:
                    chunk = await self.transport.read()
                except LinkClosed:
                    return
                up = self.transport.state is LinkState.UP
                if up and not was_up:
                    self._reset()
                was_up = up
                await self._on_chunk(chunk)
        except Exception as exc:
            # Not "log and continue": the failure is re-raised to readings() consumers.
            self._buffer.fail(exc)
            raise
