"""The context-manager face of a thing that starts and stops (threads, servers, devices)."""

from __future__ import annotations

import threading
import types
from typing import Self

__all__ = ["Startable", "StartableThread"]


class Startable:
    """``with thing:`` calls ``thing.start()`` and, however the block ends, ``thing.stop()``.

    For classes whose work runs in threads or child processes and so have blocking
    ``start``/``stop`` methods; asyncio resources are async context managers instead.
    """

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.stop()


class StartableThread(Startable):
    """A :class:`Startable` whose work is one daemon thread running ``_run`` until the
    ``_stop`` event is set. ``start()`` calls :meth:`_start_thread` when it is ready;
    ``stop()`` sets the event and waits up to 5 s for the thread (an override calls it
    first, then releases what the thread used)."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        raise NotImplementedError

    def _start_thread(self, name: str) -> None:
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
