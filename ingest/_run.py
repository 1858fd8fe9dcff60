"""Run one worker in the foreground until SIGTERM/SIGINT: what the CLI and supervisors use."""

from __future__ import annotations

import asyncio
import logging
import signal

from ingest._config import IngestConfig
from ingest._worker import IngestWorker

__all__ = ["run_worker"]

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
