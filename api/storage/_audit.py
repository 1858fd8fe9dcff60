"""The audit trail: an append-only record of every remote and administrative operation.

One row per operation, written when its outcome is known (or as ``pending`` when a
gateway's answer comes later)::

    id  at                        actor (key id, name, role)   action           gateway
        target  detail (JSON, <= 4 KiB)   result          result_at

    result: "ok" | "refused: <reason>" | "pending" | "acked" | "failed: <...>" | "timeout"

Rows are never updated, with one exception: the result of a ``pending`` row is set once
(:meth:`AuditLog.set_result`, e.g. when the gateway acks a command); a second attempt, or one
on a row that is not pending, changes nothing. Rows older than the retention are deleted
(:meth:`AuditLog.run`, hourly), nothing else deletes them.

Every call of :meth:`AuditLog.record` inside an HTTP request is noted on the request
(:data:`CURRENT`), so the audit middleware (``api._audit``) knows the handler wrote
the request's entry itself and does not write a second one.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import msgspec
from sqlalchemy import DateTime, Integer, String, Text, delete, func, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Mapped, mapped_column

from api.storage._db import Database, _Base, _now

if TYPE_CHECKING:
    from api._auth import Principal

__all__ = ["CURRENT", "AuditEntry", "AuditLog", "RequestAudit"]

log = logging.getLogger("api.audit")

#: Longest JSON ``detail`` stored; a larger one is replaced by a note saying so.
MAX_DETAIL_BYTES: Final = 4096
_RESULT_MAX: Final = 512
_PRUNE_EVERY_S: Final = 3600.0


class AuditEntry(_Base):
    __tablename__ = "audit_entries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)
    actor_key: Mapped[str | None] = mapped_column(String(32), default=None)
    actor_name: Mapped[str | None] = mapped_column(String(128), default=None, index=True)
    actor_role: Mapped[str | None] = mapped_column(String(16), default=None)
    action: Mapped[str] = mapped_column(String(64), index=True)
    gateway: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    target: Mapped[str | None] = mapped_column(String(160), default=None)
    detail: Mapped[str] = mapped_column(Text, default="{}")
    result: Mapped[str] = mapped_column(String(_RESULT_MAX))
    result_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), default=None)


@dataclass(slots=True)
class RequestAudit:
    """What one HTTP request wrote to the trail (set by the audit middleware)."""

    #: Entries :meth:`AuditLog.record` wrote while serving the request.
    recorded: list[int] = field(default_factory=list)
    #: What a handler adds to the entry the middleware writes (target, gateway, detail).
    target: str | None = None
    gateway: str | None = None
    detail: dict[str, object] = field(default_factory=dict)
    #: A result other than "ok" for a request that succeeded (e.g. "pending").
    result: str | None = None


#: The audit of the HTTP request being served (``None`` outside a request).
CURRENT: Final[contextvars.ContextVar[RequestAudit | None]] = contextvars.ContextVar(
    "api_request_audit", default=None
)


def _detail_json(detail: Mapping[str, object] | None) -> str:
    if not detail:
        return "{}"
    try:
        text = msgspec.json.encode(dict(detail)).decode()
    except (TypeError, msgspec.EncodeError):
        text = msgspec.json.encode({k: repr(v)[:200] for k, v in detail.items()}).decode()
    if len(text) > MAX_DETAIL_BYTES:
        return msgspec.json.encode({"truncated": True, "bytes": len(text)}).decode()
    return text


def _clip(text: str | None, size: int) -> str | None:
    return None if text is None else text[:size]


def _utc(moment: dt.datetime | None) -> dt.datetime | None:
    # SQLite hands datetimes back without their zone; every one stored is UTC.
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=dt.UTC)


class AuditLog:
    """The audit trail in the operator database (``services.audit``)."""

    def __init__(self, db: Database, *, keep_days: int) -> None:
        self._db = db
        self._keep = dt.timedelta(days=keep_days)

    def create_schema(self) -> None:
        AuditEntry.__table__.create(self._db.engine, checkfirst=True)  # type: ignore[attr-defined]

    # -- writing ------------------------------------------------------------------------------
    async def record(
        self,
        *,
        actor: Principal | None,
        action: str,
        gateway: str | None = None,
        target: str | None = None,
        detail: Mapping[str, object] | None = None,
        result: str,
    ) -> int:
        """Append one entry; return its id."""
        row = AuditEntry(
            at=_now(),
            actor_key=actor.key_id if actor is not None else None,
            actor_name=_clip(actor.name, 128) if actor is not None else None,
            actor_role=actor.role.name if actor is not None else None,
            action=action[:64],
            gateway=_clip(gateway, 64),
            target=_clip(target, 160),
            detail=_detail_json(detail),
            result=result[:_RESULT_MAX],
        )
        entry_id = await asyncio.to_thread(self._insert, row)
        current = CURRENT.get()
        if current is not None:
            current.recorded.append(entry_id)
        log.info(
            "audit %s", action,
            extra={"entry": entry_id, "actor": row.actor_name, "role": row.actor_role,
                   "gateway": row.gateway, "target": row.target, "result": row.result},
        )
        return entry_id

    def _insert(self, row: AuditEntry) -> int:
        with self._db.session() as s:
            s.add(row)
            s.flush()
            return int(row.id)

    async def set_result(
        self, entry_id: int, result: str, detail: Mapping[str, object] | None = None
    ) -> None:
        """Give a ``pending`` entry its result (once); ``detail`` keys are merged in."""
        changed = await asyncio.to_thread(self._set_result, entry_id, result[:_RESULT_MAX], detail)
        if not changed:
            log.warning("audit result not set: no pending entry",
                        extra={"entry": entry_id, "result": result})

    def _set_result(
        self, entry_id: int, result: str, detail: Mapping[str, object] | None
    ) -> bool:
        with self._db.session() as s:
            values: dict[str, object] = {"result": result, "result_at": _now()}
            if detail:
                old = s.scalar(select(AuditEntry.detail).where(AuditEntry.id == entry_id))
                merged = dict(msgspec.json.decode(old or "{}"))
                merged.update(detail)
                values["detail"] = _detail_json(merged)
            done = s.execute(
                update(AuditEntry)
                .where(AuditEntry.id == entry_id, AuditEntry.result == "pending")
                .values(**values)
            )
            return bool(getattr(done, "rowcount", 0))

    # -- reading ------------------------------------------------------------------------------
    def query(
        self,
        *,
        action: str | None = None,
        gateway: str | None = None,
        actor: str | None = None,
        result: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> tuple[Sequence[AuditEntry], int]:
        """Entries newest first and how many match. ``action`` and ``result`` match as
        prefixes (``command.``, ``refused``); ``actor`` is a key name or key id."""
        where = []
        if action is not None:
            where.append(AuditEntry.action.startswith(action, autoescape=True))
        if result is not None:
            where.append(AuditEntry.result.startswith(result, autoescape=True))
        if gateway is not None:
            where.append(AuditEntry.gateway == gateway)
        if actor is not None:
            where.append(or_(AuditEntry.actor_name == actor, AuditEntry.actor_key == actor))
        if since is not None:
            where.append(AuditEntry.at >= since)
        if until is not None:
            where.append(AuditEntry.at < until)
        with self._db.session() as s:
            total = s.scalar(select(func.count()).select_from(AuditEntry).where(*where)) or 0
            rows = s.scalars(
                select(AuditEntry).where(*where).order_by(AuditEntry.id.desc())
                .offset(offset).limit(limit)
            ).all()
        for row in rows:
            row.at = _utc(row.at) or row.at
            row.result_at = _utc(row.result_at)
        return rows, total

    # -- retention ----------------------------------------------------------------------------
    def prune(self, before: dt.datetime) -> int:
        """Delete entries older than ``before``; return how many went."""
        with self._db.session() as s:
            done = s.execute(delete(AuditEntry).where(AuditEntry.at < before))
        return int(getattr(done, "rowcount", 0) or 0)

    async def run(self, prune_every_s: float = _PRUNE_EVERY_S) -> None:
        """Prune entries past the retention now and every ``prune_every_s``."""
        while True:
            started = time.monotonic()
            try:
                gone = await asyncio.to_thread(self.prune, _now() - self._keep)
            except SQLAlchemyError as exc:
                log.warning("audit prune failed", extra={"error": repr(exc)})
            else:
                if gone:
                    log.info("audit entries pruned", extra={"count": gone})
            await asyncio.sleep(max(1.0, prune_every_s - (time.monotonic() - started)))
