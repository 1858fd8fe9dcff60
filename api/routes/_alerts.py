"""Active alerts and their history (viewer), acknowledgements and rule management (operator)."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Annotated, Literal

import msgspec
from fastapi import APIRouter, Body, Path, Query
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.responses import Response

from api._audit import audited, note
from api._deps import Operator, ServicesDep, Viewer
from api._encoding import doc, json_response
from api._errors import NotFound
from api._params import (
    NAME_PATTERN,
    EndQuery,
    GatewayQuery,
    Limit,
    Offset,
    Page,
    StartQuery,
    time_range,
)
from api.state import Alert, Rule
from api.storage import AlertEvent

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["alerts"])

AlertIdPath = Annotated[str, Path(pattern=r"^[0-9a-f]{16}$", description="Alert id")]
RuleIdPath = Annotated[int, Path(ge=1, le=2**31 - 1, description="Rule id")]
Severity = Literal["info", "warning", "critical"]


class AlertList(msgspec.Struct):
    items: list[Alert]
    total: int


# The fields are the engine's rule's, declared once (api.state.Rule); the subclass keeps the
# name the OpenAPI document has always used.
class RuleOut(Rule, frozen=True, kw_only=True):
    pass


class RuleList(msgspec.Struct):
    items: list[RuleOut]


@router.get("/alerts", response_model=None, responses=doc(AlertList),
            summary="Active alerts, newest first")
async def list_alerts(
    services: ServicesDep,
    _caller: Viewer,
    severity: Annotated[Severity | None, Query()] = None,
    gateway: GatewayQuery = None,
    acknowledged: bool | None = None,
) -> Response:
    active = list(services.alerts.active.values())
    unacked = [a.id for a in active if not a.acknowledged]
    if unacked:  # acknowledged through another replica (or before a restart)
        acks = await asyncio.to_thread(services.db.acks_for, unacked)
        for alert in active:
            ack = acks.get(alert.id)
            if ack is not None and not alert.acknowledged:
                alert.acknowledged, alert.ack_by = True, ack.by_name
                alert.ack_at = ack.at.isoformat().replace("+00:00", "Z")
                alert.ack_note = ack.note
    rows = sorted(
        (
            a for a in active
            if (severity is None or a.severity == severity)
            and (gateway is None or a.gateway == gateway)
            and (acknowledged is None or a.acknowledged == acknowledged)
        ),
        key=lambda a: (-a.started_ns, a.id),
    )
    return json_response(AlertList(rows, len(rows)))


class AlertEventOut(msgspec.Struct):
    alert_id: str
    transition: str
    at: str
    rule_id: int
    rule: str
    kind: str
    severity: str
    gateway: str
    device: str | None
    area: str | None
    message: str
    value: float | None
    by: str | None
    note: str | None


class AlertHistoryPage(Page[AlertEventOut]):
    start: str
    end: str


def _utc(moment: dt.datetime) -> dt.datetime:
    # SQLite hands datetimes back without their zone; every one stored is UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def _event_out(row: AlertEvent) -> AlertEventOut:
    return AlertEventOut(
        row.alert_id, row.transition, _iso(_utc(row.at)), row.rule_id, row.rule, row.kind,
        row.severity, row.gateway, row.device, row.area, row.message, row.value, row.by_name,
        row.note,
    )


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@router.get("/alerts/history", response_model=None, responses=doc(AlertHistoryPage),
            summary="Alert transitions (raised, acknowledged, resolved), newest first")
async def alert_history(
    services: ServicesDep,
    _caller: Viewer,
    start: StartQuery = None,
    end: EndQuery = None,
    gateway: GatewayQuery = None,
    rule_id: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    transition: Annotated[Literal["raised", "acknowledged", "resolved"] | None, Query()] = None,
    severity: Annotated[Severity | None, Query()] = None,
    offset: Offset = 0,
    limit: Limit = 100,
) -> Response:
    start_ns, end_ns = time_range(start, end, max_days=services.settings.max_range_days)
    since = dt.datetime.fromtimestamp(start_ns / 1e9, dt.UTC)
    until = dt.datetime.fromtimestamp(end_ns / 1e9, dt.UTC)
    rows, total = await asyncio.to_thread(
        services.db.alert_history, since=since, until=until, gateway=gateway,
        rule_id=rule_id, transition=transition, severity=severity, offset=offset, limit=limit,
    )
    return json_response(AlertHistoryPage(
        [_event_out(r) for r in rows], total, offset, limit,
        offset + limit if offset + limit < total else None, _iso(since), _iso(until),
    ))


class AckBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: Annotated[str, Field(max_length=1024)] = ""


@router.post("/alerts/{alert_id}/ack", response_model=None, responses=doc(Alert),
             summary="Acknowledge an active alert (operator)",
             openapi_extra=audited("alert.ack", target="alert_id"))
async def acknowledge(
    services: ServicesDep,
    caller: Operator,
    alert_id: AlertIdPath,
    body: Annotated[AckBody | None, Body()] = None,
) -> Response:
    alert = services.alerts.active.get(alert_id)
    if alert is None:
        raise NotFound(f"no active alert {alert_id!r}", parameter="alert_id", location="path")
    text = body.note if body is not None else ""
    subject = alert.gateway + (f"/{alert.device}" if alert.device else "")
    entry = note()
    entry.gateway, entry.detail = alert.gateway, {"rule": alert.rule, "subject": subject}
    row = await asyncio.to_thread(
        services.db.add_ack, alert_id=alert_id, rule_id=alert.rule_id, subject=subject,
        by_key=caller.key_id, by_name=caller.name, note=text,
    )
    acked = services.alerts.acknowledge(
        alert_id, by=caller.name, at=row.at.isoformat().replace("+00:00", "Z"), note=text
    )
    return json_response(acked or alert)


class BulkAckBody(BaseModel):
    """Alerts to acknowledge at once (ids from ``GET /v1/alerts``), with one note."""

    model_config = ConfigDict(extra="forbid")
    ids: Annotated[
        list[Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]],
        Field(min_length=1, max_length=1000),
    ]
    note: Annotated[str, Field(max_length=1024)] = ""


class BulkAckOut(msgspec.Struct):
    #: Acknowledged by this request.
    acknowledged: list[Alert]
    #: Ids that were acknowledged already (left as they were).
    already: list[str]
    #: Ids of no active alert (resolved meanwhile, or unknown).
    missing: list[str]


@router.post("/alerts/ack", response_model=None, responses=doc(BulkAckOut),
             summary="Acknowledge many active alerts with one note (operator)",
             openapi_extra=audited("alert.ack"))
async def acknowledge_many(
    services: ServicesDep, caller: Operator, body: Annotated[BulkAckBody, Body()]
) -> Response:
    ids = list(dict.fromkeys(body.ids))
    found = [services.alerts.active.get(i) for i in ids]
    missing = [i for i, a in zip(ids, found, strict=True) if a is None]
    already = [a.id for a in found if a is not None and a.acknowledged]
    todo = [a for a in found if a is not None and not a.acknowledged]
    if todo:
        # Acknowledged through another replica meanwhile: that acknowledgement stands.
        acks = await asyncio.to_thread(services.db.acks_for, [a.id for a in todo])
        already += [a.id for a in todo if a.id in acks]
        todo = [a for a in todo if a.id not in acks]
    done: list[Alert] = []
    if todo:
        rows = await asyncio.to_thread(
            services.db.add_acks,
            alerts=[(a.id, a.rule_id, a.gateway + (f"/{a.device}" if a.device else ""))
                    for a in todo],
            by_key=caller.key_id, by_name=caller.name, note=body.note,
        )
        at = rows[0].at.isoformat().replace("+00:00", "Z")
        for alert in todo:
            acked = services.alerts.acknowledge(alert.id, by=caller.name, at=at, note=body.note)
            if acked is not None:
                done.append(acked)
    # One entry for the request; the ids it acknowledged (a page of them, at most 1000).
    note().detail = {"acknowledged": [a.id for a in done][:100], "count": len(done),
                     "already": len(already), "missing": len(missing)}
    return json_response(BulkAckOut(done, already, missing))


class RuleBody(BaseModel):
    """An alert rule. ``threshold``: measurement, field, op, threshold, duration_s.
    ``staleness``: duration_s. ``congestion``: ratio (of free-flow speed), duration_s."""

    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=128)]
    kind: Literal["threshold", "staleness", "congestion"]
    measurement: Annotated[str | None, Field(pattern=NAME_PATTERN)] = None
    field: Annotated[str | None, Field(pattern=NAME_PATTERN)] = None
    op: Literal[">", ">=", "<", "<="] | None = None
    threshold: Annotated[float | None, Field(allow_inf_nan=False)] = None
    ratio: Annotated[float | None, Field(gt=0, le=1)] = None
    duration_s: Annotated[float, Field(ge=0, le=30 * 86400)] = 0.0
    severity: Severity = "warning"
    enabled: bool = True

    @model_validator(mode="after")
    def _complete(self) -> RuleBody:
        if self.kind == "threshold" and (
            self.measurement is None or self.field is None or self.op is None
            or self.threshold is None
        ):
            raise ValueError("a threshold rule needs measurement, field, op and threshold")
        if self.kind == "congestion" and self.ratio is None:
            raise ValueError("a congestion rule needs ratio")
        if self.kind == "staleness" and self.duration_s <= 0:
            raise ValueError("a staleness rule needs duration_s > 0")
        return self


@router.get("/alert-rules", response_model=None, responses=doc(RuleList),
            summary="Alert rules")
async def list_rules(services: ServicesDep, _caller: Viewer) -> Response:
    rows = await asyncio.to_thread(services.db.list_rules)
    return json_response(RuleList([RuleOut.from_row(r) for r in rows]))


@router.post("/alert-rules", response_model=None, status_code=201,
             responses=doc(RuleOut, "Created", status=201), summary="Add a rule (operator)",
             openapi_extra=audited("alert_rule.create"))
async def add_rule(
    services: ServicesDep, _caller: Operator, body: Annotated[RuleBody, Body()]
) -> Response:
    values = body.model_dump()
    if body.kind == "congestion":
        values["measurement"] = values["measurement"] or "TrafficFlowObserved"
        values["field"] = values["field"] or "averageVehicleSpeed"
    row = await asyncio.to_thread(services.db.add_rule, **values)
    entry = note()
    entry.target, entry.detail = str(row.id), {"name": row.name, "kind": row.kind}
    await services.reload_rules()
    return json_response(RuleOut.from_row(row), status=201)


@router.put("/alert-rules/{rule_id}", response_model=None, responses=doc(RuleOut),
            summary="Replace a rule (operator)",
            openapi_extra=audited("alert_rule.update", target="rule_id"))
async def replace_rule(
    services: ServicesDep, _caller: Operator, rule_id: RuleIdPath,
    body: Annotated[RuleBody, Body()],
) -> Response:
    row = await asyncio.to_thread(services.db.update_rule, rule_id, **body.model_dump())
    note().detail = {"name": row.name, "kind": row.kind, "enabled": row.enabled}
    await services.reload_rules()
    return json_response(RuleOut.from_row(row))


@router.delete("/alert-rules/{rule_id}", status_code=204, response_model=None,
               summary="Delete a rule (operator)",
               openapi_extra=audited("alert_rule.delete", target="rule_id"))
async def delete_rule(services: ServicesDep, _caller: Operator, rule_id: RuleIdPath) -> Response:
    await asyncio.to_thread(services.db.delete_rule, rule_id)
    await services.reload_rules()
    return Response(status_code=204)
