"""Config pushes waiting for their gateway's answer, for the audit trail.

``PUT /v1/gateways/{gw}/config`` records a ``config.push`` entry ``pending``; when the gateway
reports that version (``config/reported``) the entry gets its result: ``acked`` (applied) or
``failed: rejected: <reason>``. Only the API replica that published the push holds its entry;
the last :data:`MAX_PENDING` pushes are remembered (an older one stays ``pending``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from sqlalchemy.exc import SQLAlchemyError

from api.storage import AuditLog
from telemetry import ConfigReported

__all__ = ["MAX_PENDING", "ConfigPushes"]

log = logging.getLogger("api.audit")
MAX_PENDING: Final = 10_000


class ConfigPushes:
    """(gateway, version) -> the push's audit entry, until the gateway reports that version."""

    def __init__(self, audit: AuditLog, *, on_failed: Callable[[], None], name: str,
                 max_pending: int = MAX_PENDING) -> None:
        self._audit = audit
        self._on_failed = on_failed
        self._name = name
        self._max = max_pending
        self.pending: OrderedDict[tuple[str, int], int] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()

    def pushed(self, gateway: str, version: int, entry_id: int) -> None:
        self.pending[(gateway, version)] = entry_id
        while len(self.pending) > self._max:
            self.pending.popitem(last=False)

    def answered(self, gateway: str, reported: ConfigReported) -> None:
        """A gateway's report (called in the event loop): give the push its result."""
        if reported.gw != gateway:
            return
        entry_id = self.pending.pop((gateway, reported.version), None)
        if entry_id is None:
            return
        result = ("acked" if reported.status == "applied"
                  else f"failed: rejected: {reported.reason or 'no reason given'}"[:200])
        task = asyncio.get_running_loop().create_task(
            self._set(entry_id, result, reported.running_version),
            name=f"{self._name}.audit-result",
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _set(self, entry_id: int, result: str, running: int) -> None:
        try:
            await self._audit.set_result(entry_id, result, {"running_version": running})
        except SQLAlchemyError as exc:
            self._on_failed()
            log.error("audit result not written",
                      extra={"entry": entry_id, "result": result, "error": repr(exc)})
