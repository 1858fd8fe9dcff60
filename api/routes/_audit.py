"""The audit trail over HTTP: ``GET /v1/audit`` (admin role), newest first, filtered and paged.

Which operations are audited, and the middleware writing one entry per request, are in
:mod:`api._audit`; the store is :mod:`api.storage._audit`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Query
from starlette.responses import Response

from api._deps import Admin, ServicesDep
from api._encoding import doc, json_response
from api._params import GatewayQuery, Limit, Offset, Page
from api.storage import AuditEntry

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["admin"])


# -- GET /v1/audit ----------------------------------------------------------------------------


class AuditActor(msgspec.Struct):
    key_id: str | None
    name: str | None
    role: str | None


class AuditOut(msgspec.Struct):
    id: int
    at: str
    actor: AuditActor
    action: str
    gateway: str | None
    target: str | None
    detail: dict[str, Any]
    result: str
    result_at: str | None


class AuditPage(Page[AuditOut]):
    pass


def _iso(moment: dt.datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _out(row: AuditEntry) -> AuditOut:
    try:
        detail = msgspec.json.decode(row.detail or "{}")
    except msgspec.DecodeError:
        detail = {}
    return AuditOut(
        row.id, _iso(row.at) or "", AuditActor(row.actor_key, row.actor_name, row.actor_role),
        row.action, row.gateway, row.target, detail if isinstance(detail, dict) else {},
        row.result, _iso(row.result_at),
    )


def _aware(moment: dt.datetime | None) -> dt.datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=dt.UTC)


@router.get("/audit", response_model=None, responses=doc(AuditPage),
            summary="The audit trail, newest first (admin)")
async def list_audit(
    services: ServicesDep,
    _caller: Admin,
    action: Annotated[str | None, Query(
        pattern=r"^[a-z][a-z0-9._-]{0,63}$",
        description="Action or its prefix: key.create, command., gateway.")] = None,
    gateway: GatewayQuery = None,
    actor: Annotated[str | None, Query(
        min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$",
        description="Key name or key id")] = None,
    result: Annotated[str | None, Query(
        pattern=r"^[a-z][a-z :-]{0,31}$",
        description="Result or its prefix: ok, refused, pending, acked, failed, timeout")] = None,
    since: Annotated[dt.datetime | None, Query(description="RFC 3339, inclusive")] = None,
    until: Annotated[dt.datetime | None, Query(description="RFC 3339, exclusive")] = None,
    offset: Offset = 0,
    limit: Limit = 100,
) -> Response:
    rows, total = await asyncio.to_thread(
        services.audit.query, action=action, gateway=gateway, actor=actor, result=result,
        since=_aware(since), until=_aware(until), offset=offset, limit=limit,
    )
    nxt = offset + limit if offset + limit < total else None
    return json_response(AuditPage([_out(r) for r in rows], total, offset, limit, nxt))
