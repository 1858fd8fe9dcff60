"""NGSI-LD temporal representation of entities (NGSI-LD 5.7.3, 5.7.4) from InfluxDB history.

::

    GET /ngsi-ld/v1/temporal/entities/{entityId}   timerel, timeAt, endTimeAt, attrs, lastN,
                                                   options=temporalValues
    GET /ngsi-ld/v1/temporal/entities              type, id, idPattern, attrs, q, geo-query,
                                                   timerel+timeAt(+endTimeAt), lastN,
                                                   limit/offset (entities), count

Paging is NGSI-LD 1.7's: entities by ``limit``/``offset`` with ``Link`` rel=next/prev;
instances by ``lastN``, or a 206 with ``Content-Range`` when ``max_points`` (shared by the
entities of a page) cuts them. ``pageSize``/``pageAnchor`` (an older draft) are refused.

The entity must be in the live state (that is how its series is known); its fields are read
from InfluxDB (:func:`api.storage.entity_history`), at most ``max_points`` instances; more
is a 206 with ``Content-Range`` (or ask ``lastN``).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Final, Literal, TypedDict

from fastapi import Query, Request
from starlette.responses import Response

from api._deps import ServicesDep, Viewer
from api._params import iso, nanoseconds
from api._services import Services
from api.standards import _ngsild as ld
from api.standards._ngsild_http import (
    URI,
    AttrsQuery,
    ContextDep,
    EntityIdPath,
    Media,
    OptionsQuery,
    check_params,
    lookup,
    new_router,
    ngsi_responses,
    respond,
    wanted_attrs,
)
from api.standards._ngsild_routes import (
    SelectionQuery,
    page_links,
    select,
)
from api.state import Latest
from api.storage import select_entity_history
from telemetry import MEASUREMENTS, NAME_RE

__all__ = ["router"]

router = new_router()


_POSITION: Final = ("latitude", "longitude")


class _When(TypedDict, total=False):
    """Time bounds of a temporal query, as :func:`api.storage.entity_history` takes them."""

    after_ns: int
    start_ns: int
    end_ns: int


def _ns(value: dt.datetime, name: str) -> int:
    return nanoseconds(value, name, error=ld.BadRequestData)


def _when(timerel: str | None, time_at: dt.datetime | None,
          end_time_at: dt.datetime | None) -> _When:
    if timerel is None:
        if time_at is not None or end_time_at is not None:
            raise ld.BadRequestData("timeAt and endTimeAt need timerel", parameter="timerel")
        return {}
    if time_at is None:
        raise ld.BadRequestData("timerel needs timeAt", parameter="timeAt")
    at = _ns(time_at, "timeAt")
    if timerel == "before":
        return {"end_ns": at}
    if timerel == "after":
        return {"after_ns": at}
    if end_time_at is None:
        raise ld.BadRequestData("timerel=between needs endTimeAt", parameter="endTimeAt")
    end = _ns(end_time_at, "endTimeAt")
    if end <= at:
        raise ld.BadRequestData("endTimeAt must be after timeAt", parameter="endTimeAt")
    return {"start_ns": at, "end_ns": end}


def _temporal_options(options: str | None) -> bool:
    given = [o.strip() for o in (options or "").split(",") if o.strip()]
    for option in given:
        if option in ("aggregatedValues", "concise", "sysAttrs"):
            raise ld.OperationNotSupported(f"options={option} is not supported here",
                                           parameter="options")
        if option not in ("temporalValues", "normalized"):
            raise ld.BadRequestData(f"unknown option {option[:100]!r}", parameter="options")
    return "temporalValues" in given


_ONE_PARAMS: Final = frozenset({"timerel", "timeAt", "endTimeAt", "attrs", "lastN",
                                 "options", "local", "timeproperty"})
_QUERY_PARAMS: Final = _ONE_PARAMS | {
    "id", "idPattern", "type", "q", "georel", "geometry", "coordinates", "geoproperty",
    "limit", "offset", "count"}
#: Entities per page of a temporal query; the page shares ``max_points`` between them.
MAX_TEMPORAL_LIMIT: Final = 100


def _check_temporal(request: Request, allowed: frozenset[str]) -> None:
    for legacy in ("pageSize", "pageAnchor"):
        if legacy in request.query_params:
            raise ld.BadRequestData(
                f"{legacy} is not served: pages are NGSI-LD 1.7's, entities with limit and "
                "offset, instances with lastN and 206 Content-Range", parameter=legacy)
    check_params(request, allowed)
    if request.query_params.get("timeproperty", "observedAt") != "observedAt":
        raise ld.OperationNotSupported("timeproperty: only observedAt is supported here",
                                       parameter="timeproperty")


async def _temporal_entity(
    services: Services, latest: Latest, *, wanted: frozenset[str] | None, when: _When,
    last_n: int | None, cap: int, values_form: bool, context: ld.Context,
) -> tuple[dict[str, Any], str | None]:
    """The temporal representation of one live series: (body, Content-Range if cut)."""
    vehicle = latest.measurement == "Vehicle"
    shown = ld.attribute_values(latest)
    fields = [
        f for f in sorted(latest.fields)
        if NAME_RE.fullmatch(f) and (
            (f in shown and (wanted is None or f in wanted))
            or (vehicle and f in _POSITION and (wanted is None or "location" in wanted))
        )
    ]
    body: dict[str, Any] = {
        "id": ld.entity_id(latest.measurement, latest.gateway, latest.device, latest.tags),
        "type": context.compact(latest.measurement),
    }
    partial: str | None = None
    if fields:
        tags = dict(latest.tags)
        spec = MEASUREMENTS.get(latest.measurement)
        for key in spec.tags if spec is not None else ():
            tags.setdefault(key, "")  # a tagless series, not its tagged siblings
        statement = select_entity_history(
            measurement=latest.measurement, gateway=latest.gateway, device=latest.device,
            tags=tags, fields=fields, last=last_n, limit=cap + 1, **when,
        )
        series = await services.influx.query(statement)
        rows = [row for s in series for row in s.values]
        if last_n:
            rows.reverse()
        elif len(rows) > cap:
            rows = rows[:cap]
            partial = f"date-time {iso(int(rows[0][0]))}-{iso(int(rows[-1][0]))}/{cap}"
        columns = series[0].columns if series else ["time", *fields]
        attributes = _temporal_attributes(latest, columns, rows, values_form)
        body.update({context.compact(k): v for k, v in attributes.items()})
    return body, partial


def _options(options: str | None) -> tuple[bool, bool]:
    """(temporalValues, count): ``options=count`` is read as ``count=true`` (older clients)."""
    given = [o.strip() for o in (options or "").split(",") if o.strip()]
    counted = "count" in given
    rest = ",".join(o for o in given if o != "count")
    return _temporal_options(rest or None), counted


@router.get("/temporal/entities/{entityId}", response_model=None,
            responses=ngsi_responses("Temporal representation of an entity"),
            summary="Temporal evolution of one entity (NGSI-LD 5.7.3) from InfluxDB history")
async def retrieve_temporal(
    request: Request,
    services: ServicesDep,
    _caller: Viewer,
    media: Media,
    context: ContextDep,
    entityId: EntityIdPath,
    timerel: Annotated[Literal["before", "after", "between"] | None, Query()] = None,
    timeAt: Annotated[dt.datetime | None, Query()] = None,
    endTimeAt: Annotated[dt.datetime | None, Query()] = None,
    attrs: AttrsQuery = None,
    lastN: Annotated[int | None, Query(ge=1, le=100_000)] = None,
    options: OptionsQuery = None,
    local: bool = False,
) -> Response:
    _check_temporal(request, _ONE_PARAMS)
    values_form, _ = _options(options)
    wanted = wanted_attrs(attrs, context)
    when = _when(timerel, timeAt, endTimeAt)
    if not URI.fullmatch(entityId):
        raise ld.BadRequestData("entityId must be a URI", parameter="entityId")
    latest = lookup(services, entityId)
    if latest is None:
        raise ld.ResourceNotFound(f"no entity {entityId!r} in the live state",
                                  parameter="entityId")
    cap = services.settings.max_points
    if lastN is not None and lastN > cap:
        raise ld.BadRequestData(f"lastN must be at most {cap}", parameter="lastN")
    body, partial = await _temporal_entity(
        services, latest, wanted=wanted, when=when, last_n=lastN, cap=cap,
        values_form=values_form, context=context)
    status = 206 if partial else 200
    return respond(request, body, media, status=status, context_url=context.url,
                   headers={"Content-Range": partial} if partial else None)


@router.get("/temporal/entities", response_model=None,
            responses=ngsi_responses("Temporal representations of entities"),
            summary="Query the temporal evolution of entities (NGSI-LD 5.7.4) from InfluxDB")
async def query_temporal(
    request: Request,
    services: ServicesDep,
    _caller: Viewer,
    media: Media,
    context: ContextDep,
    params: SelectionQuery,
    timerel: Annotated[Literal["before", "after", "between"] | None, Query()] = None,
    timeAt: Annotated[dt.datetime | None, Query()] = None,
    endTimeAt: Annotated[dt.datetime | None, Query()] = None,
    lastN: Annotated[int | None, Query(ge=1, le=100_000)] = None,
    limit: Annotated[int, Query(ge=0, le=MAX_TEMPORAL_LIMIT)] = 20,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    count: bool = False,
    options: OptionsQuery = None,
    local: bool = False,
) -> Response:
    _check_temporal(request, _QUERY_PARAMS)
    values_form, counted = _options(options)
    count = count or counted
    if timerel is None:
        raise ld.BadRequestData("a temporal query needs timerel and timeAt (clause 5.7.4)",
                                parameter="timerel")
    when = _when(timerel, timeAt, endTimeAt)
    sel = params.selection(context)
    if sel.types is None and sel.ids is None and sel.wanted is None:
        raise ld.BadRequestData("a temporal query needs type, id or attrs (clause 5.7.4)",
                                parameter="type")
    if limit == 0 and not count:
        raise ld.BadRequestData("limit=0 is only allowed with count=true", parameter="limit")
    matched = select(services, sel)
    page = matched[offset: offset + limit]
    cap = services.settings.max_points
    if lastN is not None and lastN > cap:
        raise ld.BadRequestData(f"lastN must be at most {cap}", parameter="lastN")
    share = max(1, cap // max(1, len(page)))  # the page shares the point budget
    body = []
    partial: str | None = None
    for _, latest in page:
        one, cut = await _temporal_entity(
            services, latest, wanted=sel.wanted, when=when,
            last_n=min(lastN, share) if lastN else None, cap=share, values_form=values_form,
            context=context)
        body.append(one)
        partial = partial or cut
    headers = {"NGSILD-Results-Count": str(len(matched))} if count else {}
    headers.update(page_links(request, offset, limit, len(matched)))
    if partial:
        headers["Content-Range"] = partial
    return respond(request, body, media, status=206 if partial else 200, headers=headers,
                   context_url=context.url)


def _temporal_attributes(latest: Latest, columns: list[str], rows: list[list[Any]],
                         values_form: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    index = {name: i for i, name in enumerate(columns)}
    for name in columns[1:]:
        if name in _POSITION and latest.measurement == "Vehicle":
            continue
        instances = [(row[index[name]], iso(int(row[0]))) for row in rows
                     if row[index[name]] is not None]
        if not instances:
            continue
        spec = MEASUREMENTS.get(latest.measurement)
        field = spec.fields.get(name) if spec is not None else None
        unit = ld.UNIT_CODES.get(field.unit) if field is not None else None
        if values_form:
            attr: Any = {"type": "Property", "values": [[v, t] for v, t in instances]}
            if unit:
                attr["unitCode"] = unit
        else:
            attr = [{"type": "Property", "value": v, "observedAt": t,
                     **({"unitCode": unit} if unit else {})} for v, t in instances]
        out[name] = attr
    if latest.measurement == "Vehicle" and all(p in index for p in _POSITION):
        points = [({"type": "Point", "coordinates": [row[index["longitude"]],
                                                     row[index["latitude"]]]},
                   iso(int(row[0])))
                  for row in rows
                  if row[index["longitude"]] is not None and row[index["latitude"]] is not None]
        if points:
            if values_form:
                out["location"] = {"type": "GeoProperty", "values": [[p, t] for p, t in points]}
            else:
                out["location"] = [{"type": "GeoProperty", "value": p, "observedAt": t}
                                   for p, t in points]
    return out
