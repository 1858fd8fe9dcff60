"""Key management (admin) and the calling key's own permissions (``/v1/me``)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

import msgspec
from fastapi import APIRouter, Body, Path
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from api._audit import audited, note
from api._auth import Role
from api._deps import Admin, Caller, ServicesDep
from api._encoding import doc, json_response
from api.storage import ApiKey

__all__ = ["router"]

router = APIRouter()


class KeyOut(msgspec.Struct):
    id: str
    name: str
    role: str
    prefix: str
    created_at: str
    revoked_at: str | None


class KeyCreated(KeyOut):
    key: str = ""


class KeyList(msgspec.Struct):
    items: list[KeyOut]


def _key_out(row: ApiKey) -> KeyOut:
    return KeyOut(
        row.id, row.name, row.role, row.prefix,
        row.created_at.isoformat(), row.revoked_at.isoformat() if row.revoked_at else None,
    )


class KeyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")]
    role: Literal["viewer", "operator", "engineer", "admin"]


@router.get("/v1/keys", response_model=None, responses=doc(KeyList), tags=["admin"],
            summary="API keys (admin; the keys themselves are never shown again)")
async def list_keys(services: ServicesDep, _caller: Admin) -> Response:
    rows = await asyncio.to_thread(services.db.list_keys)
    return json_response(KeyList([_key_out(r) for r in rows]))


@router.post("/v1/keys", response_model=None, status_code=201, tags=["admin"],
             responses=doc(KeyCreated, "Created; `key` is shown this once", status=201),
             summary="Create an API key (admin)", openapi_extra=audited("key.create"))
async def create_key(
    services: ServicesDep, _caller: Admin, body: Annotated[KeyBody, Body()]
) -> Response:
    row, key = await asyncio.to_thread(services.db.create_key, name=body.name, role=body.role)
    entry = note()
    entry.target, entry.detail = row.id, {"name": row.name, "role": row.role}
    out = _key_out(row)
    return json_response(
        KeyCreated(**{f: getattr(out, f) for f in out.__struct_fields__}, key=key), status=201
    )


@router.delete("/v1/keys/{key_id}", response_model=None, responses=doc(KeyOut), tags=["admin"],
               summary="Revoke an API key (admin)",
               openapi_extra=audited("key.revoke", target="key_id"))
async def revoke_key(
    services: ServicesDep,
    _caller: Admin,
    key_id: Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")],
) -> Response:
    row = await asyncio.to_thread(services.db.revoke_key, key_id)
    services.keys.invalidate()
    note().detail = {"name": row.name, "role": row.role}
    return json_response(_key_out(row))


class Me(msgspec.Struct):
    """The caller's key: who it is and what its role lets it do."""

    key_id: str
    name: str
    role: str
    #: What this key may do beyond reading, so a client can offer only what will work.
    can: dict[str, bool]


#: Actions a client may want to offer, and the least role each needs.
_ACTIONS: dict[str, Role] = {
    "acknowledge_alerts": Role.operator,
    "manage_alert_rules": Role.operator,
    "configure_gateways": Role.engineer,
    "manage_keys": Role.admin,
    "read_audit": Role.admin,
}


@router.get("/v1/me", response_model=None, responses=doc(Me), tags=["meta"],
            summary="The calling key's name, role and permitted actions")
async def me(caller: Caller) -> Response:
    return json_response(
        Me(caller.key_id, caller.name, caller.role.name,
           {action: caller.role >= least for action, least in _ACTIONS.items()})
    )
