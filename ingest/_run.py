"""Ways to run a worker: in the foreground until a signal, or on a background thread.

:func:`run_worker` is what the CLI and supervisors use; :class:`WorkerThread` is for
synchronous callers (the demo, tests).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading

from foundation import Startable
from ingest._config import IngestConfig
from ingest._errors import IngestError
from ingest._metrics import IngestMetrics
from ingest._worker import IngestWorker

__all__ = ["WorkerThread", "run_worker"]

log = logging.getLogger("ingest")


async def _serve(config: IngestConfig) -> None:
    loop = asyncio.get_running_loop()
    async with IngestWorker(config) as worker:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _on_signal, worker, sig)
        try:
            await worker.wait_stopped()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)


def _on_signal(worker: IngestWorker, sig: signal.Signals) -> None:
    log.info("signal received, stopping", extra={"signal": sig.name})
    worker.stop()


def run_worker(config: IngestConfig) -> None:
    """Run a worker until SIGTERM or SIGINT, then stop gracefully (acks only what was written).

    Raises :class:`~ingest.IngestError` subclasses when it cannot start or fails.
    """
    asyncio.run(_serve(config))


class WorkerThread(Startable):
    """Runs an :class:`IngestWorker` on its own event loop in a background thread.

    For synchronous callers (the demo, tests)::

        with WorkerThread(config) as worker:   # returns once subscribed
            ...
        # leaving stops it gracefully (acks only what was written)
    """

    def __init__(self, config: IngestConfig, *, metrics: IngestMetrics | None = None) -> None:
        self.worker = IngestWorker(config, metrics=metrics)
        self._thread = threading.Thread(
            target=self._main, name=f"{self.worker.name}.thread", daemon=True
        )
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
            self._error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        async with self.worker:
            self._ready.set()
            await self.worker.wait_stopped()

    def start(self, timeout: float = 60.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise IngestError(f"worker did not start within {timeout}s")
        if self._error is not None:
            raise self._error

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the worker and wait for its thread; nothing to do if it never started."""
        if not self._thread.is_alive() and self._thread.ident is None:
            return
        self.worker.stop()
        self._thread.join(timeout)
        if self._error is not None:
            raise self._error
