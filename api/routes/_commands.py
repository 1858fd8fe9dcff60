"""Remote operations: ``POST /v1/gateways/{gateway}/commands/{name}`` (engineer role).

::

    caller (engineer key) ── rate limit per key (command_rate_per_min) ── 429
        ── name and args checked here ── 422          ── unknown gateway ── 404
        ── audit entry "pending" ── cmd ──▶ gateway ──▶ answer ─┬─ ok        200 "acked"
                                                                ├─ refused   409 "refused: ..."
                                                                ├─ none      504 "timeout"
                                                                └─ broker    503 "failed: ..."

Every call leaves exactly one audit entry (``services.audit``, action ``command.<name>``):
one refused before the handler runs (403, request validation) by the audit middleware
(:mod:`api._audit`), the others by the handler: refusals with their reason, a call
that was sent as ``pending`` first, given its result when the answer (or the timeout)
comes. The names: ``ping``, ``logs``, ``restart``, ``sync-time-check``, ``time-sync``,
``update`` (docs/api.md, "Remote operations"; the agent's side: docs/operations.md).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Final, Literal

import msgspec
from fastapi import APIRouter, Body, Path, Query
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response

from api._audit import audited
from api._auth import Principal
from api._deps import Engineer, ServicesDep
from api._encoding import doc, json_response
from api._errors import NotFound, ProblemError, RateLimited, UpstreamUnavailable
from api._params import GatewayPath, iso
from api._services import Services
from api.state import CommandTimeout

__all__ = ["COMMANDS", "router"]

router = APIRouter(prefix="/v1", tags=["inventory"])

#: What the endpoint forwards; anything else is refused (422) before it reaches a gateway.
COMMANDS: Final = ("ping", "logs", "restart", "sync-time-check", "time-sync", "update")
#: Largest ``args`` object accepted, JSON-encoded.
MAX_ARGS_BYTES: Final = 4096


class CommandRefused(ProblemError):
    status = 409
    slug = "command-refused"
    title = "The gateway refused the command"


class CommandInvalid(ProblemError):
    status = 422
    slug = "invalid-command"
    title = "Invalid command"


class GatewayTimeout(ProblemError):
    status = 504
    slug = "gateway-timeout"
    title = "The gateway did not answer in time"


class _NoArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _LogsArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lines: Annotated[int, Field(ge=1, le=1000)] = 100
    since_s: Annotated[float, Field(gt=0, le=7 * 86400)] | None = None
    level: Literal["debug", "info", "warning", "error", "critical"] = "debug"
    max_bytes: Annotated[int, Field(ge=1024, le=128 * 1024)] = 64 * 1024


class _UpdateArgs(BaseModel):
    """What is forwarded to the agent's ``update`` (edge_agent._update checks it again)."""

    model_config = ConfigDict(extra="forbid")
    url: Annotated[str, Field(min_length=1, max_length=2048)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")] | None = None
    deadline: Annotated[float, Field(gt=0, le=3600)] | None = None
    #: A deliberate rollback to an older release (docs/gateway-install.md, "Versions").
    allow_downgrade: bool | None = None
    #: The running version installed again.
    reinstall: bool | None = None


_ARGS: Final[dict[str, type[BaseModel]]] = {
    "ping": _NoArgs, "logs": _LogsArgs, "restart": _NoArgs, "sync-time-check": _NoArgs,
    "time-sync": _NoArgs, "update": _UpdateArgs,
}


class ClockOut(msgspec.Struct):
    #: Gateway clock minus the API's clock, s (error within ± delay_s / 2).
    offset_s: float
    delay_s: float
    checked_at: str
    threshold_s: float
    off: bool
    #: The gateway stored the result (it reports it in its health); else why not.
    recorded: bool
    record_error: str | None = None


class CommandResult(msgspec.Struct, omit_defaults=True):
    gateway: str
    command: str
    ok: bool
    result: dict[str, Any]
    #: Seconds from publishing the request to the answer's arrival.
    elapsed_s: float
    #: The audit entry of this call (``GET /v1/audit``).
    audit_id: int | None = None
    clock: ClockOut | None = None


def check_args(name: str, args: dict[str, Any]) -> dict[str, Any]:
    """``args`` for ``name``, validated (:class:`CommandInvalid` naming what is wrong)."""
    if name not in _ARGS:
        raise CommandInvalid(
            f"unknown command {name!r} (allowed: {', '.join(COMMANDS)})",
            parameter="name", location="path",
        )
    if len(msgspec.json.encode(args)) > MAX_ARGS_BYTES:
        raise CommandInvalid(f"args larger than {MAX_ARGS_BYTES} bytes", parameter="body",
                             location="body")
    try:
        model = _ARGS[name].model_validate(args)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise CommandInvalid(f"{name}: {where}: {first.get('msg')}", parameter=where,
                             location="body") from None
    return model.model_dump(exclude_none=True, exclude_unset=True)


async def _refuse(
    services: Services, caller: Principal, name: str, gateway: str, args: dict[str, Any],
    exc: ProblemError,
) -> ProblemError:
    await services.audit.record(
        actor=caller, action=f"command.{name}", gateway=gateway, detail=args,
        result=f"refused: {exc.detail}",
    )
    return exc


@router.post(
    "/gateways/{gateway}/commands/{name}", response_model=None,
    responses=doc(CommandResult, "The gateway's answer"),
    summary="Run a remote operation on a gateway and wait for its answer (engineer)",
    # A refusal before the handler (403 role, 422 request validation) is written by the
    # audit middleware; the handler writes every other entry itself.
    openapi_extra=audited("command.{name}"),
)
async def run_command(
    services: ServicesDep,
    caller: Engineer,
    gateway: GatewayPath,
    name: Annotated[str, Path(pattern=r"^[a-z][a-z0-9-]{0,31}$", description=", ".join(COMMANDS))],
    body: Annotated[dict[str, Any] | None, Body(description="The command's args")] = None,
    timeout_s: Annotated[
        float | None, Query(gt=0, le=3600, description="Wait this long for the answer "
                            "(default command_timeout_s, capped at command_timeout_max_s)")
    ] = None,
) -> Response:
    s = services.settings
    args = body or {}
    wait = services.command_limiter.take(caller.key_id)
    if wait:
        raise await _refuse(services, caller, name, gateway, args, RateLimited(
            f"command rate limit of {s.command_rate_per_min:g}/min for this key exceeded",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        ))
    try:
        args = check_args(name, args)
    except CommandInvalid as exc:
        raise await _refuse(services, caller, name, gateway, args, exc) from None
    if gateway not in services.inventory.gateways:
        raise await _refuse(services, caller, name, gateway, args, NotFound(
            f"no gateway {gateway!r}", parameter="gateway", location="path"))
    timeout = min(timeout_s or s.command_timeout_s, s.command_timeout_max_s)
    entry = await services.audit.record(
        actor=caller, action=f"command.{name}", gateway=gateway, detail=args, result="pending",
    )
    clock: ClockOut | None = None
    try:
        if name == "sync-time-check":
            answer, check, record_error = await services.commands.check_clock(
                gateway, timeout_s=timeout, threshold_s=s.clock_off_threshold_s)
            if check is not None:
                clock = ClockOut(
                    offset_s=check.offset_s, delay_s=check.delay_s,
                    checked_at=iso(check.checked_ns), threshold_s=check.threshold_s,
                    off=check.off, recorded=record_error is None, record_error=record_error,
                )
        else:
            answer = await services.commands.request(gateway, name, args, timeout_s=timeout)
    except CommandTimeout as exc:
        await services.audit.set_result(entry, "timeout")
        raise GatewayTimeout(str(exc)) from None
    except UpstreamUnavailable as exc:
        await services.audit.set_result(entry, f"failed: {exc.detail}")
        raise
    resp = answer.response
    if not resp.ok:
        reason = resp.error or "no reason given"
        await services.audit.set_result(entry, f"refused: {reason}")
        raise CommandRefused(f"gateway {gateway!r} refused {name!r}: {reason}")
    await services.audit.set_result(entry, "acked")
    return json_response(CommandResult(
        gateway=gateway, command=name, ok=True, result=resp.result,
        elapsed_s=answer.elapsed_s, audit_id=entry, clock=clock,
    ))
