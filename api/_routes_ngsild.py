"""NGSI-LD (ETSI GS CIM 009) read-only context source over the live state, plus temporal.

::

    GET /ngsi-ld/v1/entities                query: type, id, idPattern, attrs, q, georel,
                                            geometry, coordinates, geoproperty, limit, offset,
                                            count, options=keyValues|normalized
    GET /ngsi-ld/v1/entities/{entityId}     one entity (attrs, options)
    GET /ngsi-ld/v1/types[/{type}]          entity types (details=true: their attributes)
    GET /ngsi-ld/v1/attributes[/{attrId}]   attribute names (details=true: types, counts)
    GET /ngsi-ld/v1/temporal/entities/{entityId}   history from InfluxDB (timerel, timeAt,
                                            endTimeAt, attrs, lastN, options=temporalValues)
    GET /ngsi-ld/v1/context.jsonld          the @context the Link header points to (public)

Entities come from the API's live state (``/v1/live``), never from InfluxDB per request;
``_ngsild.py`` holds the id scheme, the entity shapes, the q and geo-query subsets and the
errors. ``Accept: application/ld+json`` puts ``@context`` in the body; ``application/json``
(the default) sends it as a JSON-LD ``Link`` header instead; anything else is 406. Errors are
NGSI-LD ProblemDetails; 401/403/429 stay the platform's (same keys and rate limits as /v1).
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Callable, Coroutine, Iterator
from typing import Annotated, Any, Final, Literal

import msgspec
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.responses import Response

from api import _ngsild as ld
from api._deps import ServicesDep, Viewer
from api._influxql import quote_ident, quote_string
from api._live import Latest, iso, series_key
from api._services import Services
from telemetry import MEASUREMENTS, NAME_RE, Location

__all__ = ["router"]

MAX_LIMIT: Final = 1000
DEFAULT_LIMIT: Final = 20
_encoder: Final = msgspec.json.Encoder()
_PROBLEM_DOC: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "type": {"type": "string"}, "title": {"type": "string"},
        "status": {"type": "integer"}, "detail": {"type": "string"},
        "instance": {"type": "string"},
    },
    "required": ["type", "status", "detail"],
}
#: Query parameters NGSI-LD defines that this subset does not implement: 422, never ignored.
_UNSUPPORTED: Final = frozenset(
    {"csf", "scopeQ", "lang", "pick", "omit", "join", "joinLevel", "containedBy",
     "datasetId", "geometryProperty", "expandValues", "entityMap", "collect", "typePattern",
     "aggrMethods", "aggrPeriodDuration", "timeproperty", "dataset"}
)


class _NgsiLdRoute(APIRoute):
    """A route whose parameter errors are NGSI-LD ``BadRequestData``, not the platform's."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                errors = exc.errors()
                first = errors[0] if errors else {}
                loc = [str(p) for p in first.get("loc", ())]
                name = ".".join(loc[1:]) or "request"
                raise ld.BadRequestData(f"{name}: {first.get('msg', 'invalid')}",
                                        parameter=name) from exc

        return route


router = APIRouter(prefix="/ngsi-ld/v1", tags=["ngsi-ld"], route_class=_NgsiLdRoute)


def _responses(description: str) -> dict[int | str, Any]:
    media: dict[str, Any] = {"schema": {}}
    problem = {"application/problem+json": {"schema": _PROBLEM_DOC}}
    return {
        200: {"description": description,
              "content": {ld.JSON: media, ld.LD_JSON: media}},
        400: {"description": "BadRequestData / InvalidRequest", "content": problem},
        401: {"description": "No valid API key", "content": problem},
        404: {"description": "ResourceNotFound", "content": problem},
        406: {"description": "Accept names no served media type", "content": problem},
        422: {"description": "OperationNotSupported", "content": problem},
        429: {"description": "Rate limited", "content": problem},
    }


def _media(request: Request) -> Literal["application/json", "application/ld+json"]:
    return ld.negotiate(request.headers.get("accept"))


Media = Annotated[Literal["application/json", "application/ld+json"], Depends(_media)]
OptionsQuery = Annotated[
    str | None,
    Query(max_length=200, description="keyValues (or simplified) or normalized (default)"),
]
AttrsQuery = Annotated[
    str | None, Query(max_length=4000, description="Comma-separated attribute names")
]


def _context_url(request: Request) -> str:
    return str(request.url_for("ngsild_context"))


def _respond(
    request: Request, body: Any, media: str, *, status: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    context = _context_url(request)
    out_headers = dict(headers or {})
    if media == ld.LD_JSON:
        if isinstance(body, list):
            body = [{**item, "@context": context} for item in body]
        else:
            body = {**body, "@context": context}
    else:
        out_headers["Link"] = f'<{context}>; rel="{ld.LINK_REL}"; type="{ld.LD_JSON}"'
    return Response(_encoder.encode(body), status_code=status, media_type=media,
                    headers=out_headers)


def _check_params(request: Request, allowed: frozenset[str]) -> None:
    for name in request.query_params:
        if name in allowed:
            continue
        if name in _UNSUPPORTED:
            raise ld.OperationNotSupported(f"parameter {name!r} is not supported here",
                                           parameter=name)
        raise ld.BadRequestData(f"unknown parameter {name[:100]!r}", parameter=name)


def _key_values(options: str | None, fmt: str | None = None) -> bool:
    """Whether the simplified representation was asked for (``options`` or ``format``)."""
    given = [o.strip() for o in (options or "").split(",") if o.strip()]
    if fmt is not None:
        given.append(fmt)
    for option in given:
        if option in ("concise", "sysAttrs"):
            raise ld.OperationNotSupported(
                f"options={option} is not supported here; keyValues and normalized are",
                parameter="options")
        if option not in ("keyValues", "simplified", "normalized"):
            raise ld.BadRequestData(f"unknown option {option[:100]!r}", parameter="options")
    simplified = any(o in ("keyValues", "simplified") for o in given)
    if simplified and "normalized" in given:
        raise ld.BadRequestData("options cannot be both keyValues and normalized",
                                parameter="options")
    return simplified


def _attrs(attrs: str | None) -> frozenset[str] | None:
    if attrs is None:
        return None
    out = frozenset(ld.names(attrs.split(",")))
    if not out:
        raise ld.BadRequestData("attrs is empty", parameter="attrs")
    return out


def _location(services: Services, latest: Latest) -> Location | None:
    gateway = services.inventory.gateways.get(latest.gateway)
    if gateway is None:
        return None
    device = gateway.devices.get(latest.device)
    if device is not None and device.location is not None:
        return device.location
    return gateway.location


def _all_series(services: Services, types: list[str] | None) -> Iterator[Latest]:
    live = services.live
    if types is not None:
        for type_ in dict.fromkeys(types):
            yield from live.by_measurement.get(type_, {}).values()
        return
    for series in live.by_device.values():
        yield from series.values()


def _lookup(services: Services, text: str) -> Latest | None:
    for ref in ld.parse_entity_id(text):
        series = services.live.by_device.get((ref.gateway, ref.device))
        if series is None:
            continue
        latest = series.get(series_key(ref.type, dict(ref.tags)))
        if latest is not None:
            return latest
    return None


def _has_attrs(services: Services, latest: Latest, attrs: frozenset[str]) -> bool:
    if "location" in attrs and ld.has_location(latest, _location(services, latest)):
        return True
    return not attrs.isdisjoint(ld.attribute_values(latest))


_URI: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s<>\"{}|\\^`]+")
# A group that is quantified and holds a quantifier: the shape of catastrophic backtracking.
_NESTED_QUANTIFIER: Final = re.compile(r"\([^()]*[*+?}][^()]*\)\s*[*+?{]")


def _id_pattern(pattern: str | None) -> re.Pattern[str] | None:
    if pattern is None:
        return None
    if len(pattern) > 256 or _NESTED_QUANTIFIER.search(pattern):
        raise ld.OperationNotSupported(
            "idPattern: at most 256 characters and no quantified group holding a quantifier "
            "(such as (a+)+)", parameter="idPattern")
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ld.BadRequestData(f"idPattern is not a regular expression: {exc}",
                                parameter="idPattern") from exc


@router.get("/context.jsonld", name="ngsild_context", response_model=None,
            summary="The JSON-LD @context of the NGSI-LD interface (public)",
            responses={200: {"description": "JSON-LD context",
                             "content": {ld.LD_JSON: {"schema": {"type": "object"}}}}})
async def context() -> Response:
    return Response(_encoder.encode(ld.context_document()), media_type=ld.LD_JSON,
                    headers={"Cache-Control": "public, max-age=3600"})


_ENTITY_PARAMS: Final = frozenset(
    {"id", "idPattern", "type", "attrs", "q", "georel", "geometry", "coordinates",
     "geoproperty", "limit", "offset", "count", "options", "format", "local"}
)


@router.get("/entities", response_model=None, responses=_responses("Entities"),
            summary="Query entities (NGSI-LD 5.7.2) from the live state")
async def query_entities(
    request: Request,
    services: ServicesDep,
    _caller: Viewer,
    media: Media,
    id: Annotated[str | None, Query(max_length=20_000,
                                    description="Comma-separated entity ids")] = None,
    idPattern: Annotated[str | None, Query(max_length=1000)] = None,
    type: Annotated[str | None, Query(max_length=2000,
                                      description="Comma-separated entity types")] = None,
    attrs: AttrsQuery = None,
    q: Annotated[str | None, Query(max_length=4000, description="NGSI-LD query subset")] = None,
    georel: Annotated[str | None, Query(max_length=200,
                                        description="near;maxDistance==<m>")] = None,
    geometry: Annotated[str | None, Query(max_length=50, description="Point")] = None,
    coordinates: Annotated[str | None, Query(max_length=200,
                                             description="[longitude,latitude]")] = None,
    geoproperty: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=0, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    count: bool = False,
    options: OptionsQuery = None,
    format: Annotated[
        Literal["keyValues", "simplified", "normalized"] | None, Query()
    ] = None,
    local: bool = False,
) -> Response:
    _check_params(request, _ENTITY_PARAMS)
    key_values = _key_values(options, format)
    wanted = _attrs(attrs)
    query = ld.parse_q(q) if q is not None else None
    geo = ld.parse_georel(georel, geometry, coordinates)
    pattern = _id_pattern(idPattern)
    if limit == 0 and not count:
        raise ld.BadRequestData("limit=0 is only allowed with count=true", parameter="limit")
    if type is None and id is None and idPattern is None and wanted is None and q is None \
            and geo is None:
        raise ld.BadRequestData(
            "a query needs at least one of type, id, idPattern, attrs, q or a geo-query",
            parameter="type")
    types: list[str] | None = None
    if type is not None:
        if re.search(r"[;()]", type):
            raise ld.OperationNotSupported(
                "type: only lists of types (',' or '|') are supported here", parameter="type")
        types = ld.names(re.split(r"[,|]", type))
        if not types:
            raise ld.BadRequestData("type is empty", parameter="type")
    if id is not None:
        ids = [i.strip() for i in id.split(",") if i.strip()]
        if not ids or not all(_URI.fullmatch(i) for i in ids):
            raise ld.BadRequestData("id must be a comma-separated list of URIs", parameter="id")
        found = (_lookup(services, i) for i in dict.fromkeys(ids))
        candidates: Iterator[Latest] = (
            lt for lt in found if lt is not None and (types is None or lt.measurement in types)
        )
    else:
        candidates = _all_series(services, types)
    matched: list[tuple[str, Latest]] = []
    for latest in candidates:
        eid = ld.entity_id(latest.measurement, latest.gateway, latest.device, latest.tags)
        if pattern is not None and pattern.search(eid) is None:
            continue
        if wanted is not None and not _has_attrs(services, latest, wanted):
            continue
        if query is not None and not query.matches(ld.attribute_values(latest)):
            continue
        if geo is not None:
            if geoproperty not in (None, "location"):
                continue  # no entity here has another GeoProperty
            where = ld.has_location(latest, _location(services, latest))
            if where is None or not geo.matches(*where):
                continue
        matched.append((eid, latest))
    matched.sort(key=lambda pair: pair[0])
    page = matched[offset: offset + limit]
    body = [ld.entity(lt, _location(services, lt), attrs=wanted, key_values=key_values)
            for _, lt in page]
    headers = {"NGSILD-Results-Count": str(len(matched))} if count else None
    return _respond(request, body, media, headers=headers)


EntityIdPath = Annotated[str, Path(max_length=1024, description="Entity id (URN)")]


@router.get("/entities/{entityId}", response_model=None, responses=_responses("Entity"),
            summary="Retrieve one entity (NGSI-LD 5.7.1) from the live state")
async def retrieve_entity(
    request: Request,
    services: ServicesDep,
    _caller: Viewer,
    media: Media,
    entityId: EntityIdPath,
    attrs: AttrsQuery = None,
    type: Annotated[str | None, Query(max_length=200)] = None,
    options: OptionsQuery = None,
    format: Annotated[
        Literal["keyValues", "simplified", "normalized"] | None, Query()
    ] = None,
    local: bool = False,
) -> Response:
    _check_params(request, frozenset({"attrs", "type", "options", "format", "local"}))
    key_values = _key_values(options, format)
    wanted = _attrs(attrs)
    if not _URI.fullmatch(entityId):
        raise ld.BadRequestData("entityId must be a URI", parameter="entityId")
    latest = _lookup(services, entityId)
    if latest is None or (type is not None and ld.expand_term(type) != latest.measurement):
        raise ld.ResourceNotFound(f"no entity {entityId!r}", parameter="entityId")
    if wanted is not None and not _has_attrs(services, latest, wanted):
        raise ld.ResourceNotFound(f"entity {entityId!r} has none of the attributes {attrs!r}",
                                  parameter="attrs")
    body = ld.entity(latest, _location(services, latest), attrs=wanted, key_values=key_values)
    return _respond(request, body, media)


def _present(services: Services, latest: Latest) -> dict[str, str]:
    """The attributes one entity shows: name -> attribute type."""
    present = dict.fromkeys(ld.attribute_values(latest), "Property")
    if ld.has_location(latest, _location(services, latest)):
        present["location"] = "GeoProperty"
    return present


def _catalogue(services: Services) -> dict[str, dict[str, set[str]]]:
    """type -> attribute -> attribute types, over the live state."""
    out: dict[str, dict[str, set[str]]] = {}
    for latest in _all_series(services, None):
        attributes = out.setdefault(latest.measurement, {})
        for name, kind in _present(services, latest).items():
            attributes.setdefault(name, set()).add(kind)
    return out


def _list_id(kind: str) -> str:
    return f"urn:ngsi-ld:{kind}:{uuid.uuid4().hex}"


DetailsQuery = Annotated[bool, Query(description="Detailed objects instead of names")]


@router.get("/types", response_model=None, responses=_responses("Entity types"),
            summary="Available entity types (NGSI-LD 5.7.5/5.7.6)")
async def list_types(
    request: Request, services: ServicesDep, _caller: Viewer, media: Media,
    details: DetailsQuery = False, local: bool = False,
) -> Response:
    _check_params(request, frozenset({"details", "local"}))
    catalogue = _catalogue(services)
    if not details:
        body: Any = {"id": _list_id("EntityTypeList"), "type": "EntityTypeList",
                     "typeList": sorted(catalogue)}
    else:
        body = [{"id": ld.term_iri(name), "type": "EntityType", "typeName": name,
                 "attributeNames": sorted(attributes)}
                for name, attributes in sorted(catalogue.items())]
    return _respond(request, body, media)


@router.get("/types/{type}", response_model=None, responses=_responses("Entity type"),
            summary="One entity type with its attributes and entity count (NGSI-LD 5.7.7)")
async def retrieve_type(
    request: Request, services: ServicesDep, _caller: Viewer, media: Media,
    type: Annotated[str, Path(max_length=1024)],
    local: bool = False,
) -> Response:
    _check_params(request, frozenset({"local"}))
    name = ld.expand_term(type)
    entities = services.live.by_measurement.get(name, {})
    if not entities:
        raise ld.ResourceNotFound(f"no entities of type {type!r}", parameter="type")
    attributes = _catalogue(services).get(name, {})
    body = {
        "id": ld.term_iri(name), "type": "EntityTypeInfo", "typeName": name,
        "entityCount": len(entities),
        "attributeDetails": [
            {"id": ld.term_iri(attr), "type": "Attribute", "attributeName": attr,
             "attributeTypes": sorted(kinds)}
            for attr, kinds in sorted(attributes.items())
        ],
    }
    return _respond(request, body, media)


def _attribute_index(services: Services) -> dict[str, tuple[set[str], set[str], int]]:
    """attribute -> (attribute types, entity types, entity count)."""
    index: dict[str, tuple[set[str], set[str], int]] = {}
    for latest in _all_series(services, None):
        for name, kind in _present(services, latest).items():
            kinds, types, n = index.get(name, (set(), set(), 0))
            kinds.add(kind)
            types.add(latest.measurement)
            index[name] = (kinds, types, n + 1)
    return index


def _attribute(name: str, kinds: set[str], types: set[str], n: int) -> dict[str, Any]:
    return {"id": ld.term_iri(name), "type": "Attribute", "attributeName": name,
            "attributeCount": n, "attributeTypes": sorted(kinds), "typeNames": sorted(types)}


@router.get("/attributes", response_model=None, responses=_responses("Attributes"),
            summary="Available attributes (NGSI-LD 5.7.8/5.7.9)")
async def list_attributes(
    request: Request, services: ServicesDep, _caller: Viewer, media: Media,
    details: DetailsQuery = False, local: bool = False,
) -> Response:
    _check_params(request, frozenset({"details", "local"}))
    index = _attribute_index(services)
    if not details:
        body: Any = {"id": _list_id("AttributeList"), "type": "AttributeList",
                     "attributeList": sorted(index)}
    else:
        body = [_attribute(name, *index[name]) for name in sorted(index)]
    return _respond(request, body, media)


@router.get("/attributes/{attrId}", response_model=None, responses=_responses("Attribute"),
            summary="One attribute: its types, entity types and count (NGSI-LD 5.7.10)")
async def retrieve_attribute(
    request: Request, services: ServicesDep, _caller: Viewer, media: Media,
    attrId: Annotated[str, Path(max_length=1024)],
    local: bool = False,
) -> Response:
    _check_params(request, frozenset({"local"}))
    name = ld.expand_term(attrId)
    found = _attribute_index(services).get(name)
    if found is None:
        raise ld.ResourceNotFound(f"no attribute {attrId!r}", parameter="attrId")
    return _respond(request, _attribute(name, *found), media)


# ---------------------------------------------------------------------------------------------
# Temporal representation (NGSI-LD 5.7.3) from InfluxDB

_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_POSITION: Final = ("latitude", "longitude")


def _ns(value: dt.datetime, name: str) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    if not dt.datetime(2000, 1, 1, tzinfo=dt.UTC) <= value < dt.datetime(2100, 1, 1,
                                                                          tzinfo=dt.UTC):
        raise ld.BadRequestData(f"{name} must be between 2000-01-01 and 2100-01-01",
                                parameter=name)
    return (value - _EPOCH) // dt.timedelta(microseconds=1) * 1000


def _time_clause(timerel: str | None, time_at: dt.datetime | None,
                 end_time_at: dt.datetime | None) -> str:
    if timerel is None:
        if time_at is not None or end_time_at is not None:
            raise ld.BadRequestData("timeAt and endTimeAt need timerel", parameter="timerel")
        return ""
    if time_at is None:
        raise ld.BadRequestData("timerel needs timeAt", parameter="timeAt")
    at = _ns(time_at, "timeAt")
    if timerel == "before":
        return f" AND time < {at}"
    if timerel == "after":
        return f" AND time > {at}"
    if end_time_at is None:
        raise ld.BadRequestData("timerel=between needs endTimeAt", parameter="endTimeAt")
    end = _ns(end_time_at, "endTimeAt")
    if end <= at:
        raise ld.BadRequestData("endTimeAt must be after timeAt", parameter="endTimeAt")
    return f" AND time >= {at} AND time < {end}"


def _temporal_options(options: str | None) -> bool:
    given = [o.strip() for o in (options or "").split(",") if o.strip()]
    for option in given:
        if option in ("aggregatedValues", "concise", "sysAttrs"):
            raise ld.OperationNotSupported(f"options={option} is not supported here",
                                           parameter="options")
        if option not in ("temporalValues", "normalized"):
            raise ld.BadRequestData(f"unknown option {option[:100]!r}", parameter="options")
    return "temporalValues" in given


@router.get("/temporal/entities/{entityId}", response_model=None,
            responses=_responses("Temporal representation of an entity"),
            summary="Temporal evolution of one entity (NGSI-LD 5.7.3) from InfluxDB history")
async def retrieve_temporal(
    request: Request,
    services: ServicesDep,
    _caller: Viewer,
    media: Media,
    entityId: EntityIdPath,
    timerel: Annotated[Literal["before", "after", "between"] | None, Query()] = None,
    timeAt: Annotated[dt.datetime | None, Query()] = None,
    endTimeAt: Annotated[dt.datetime | None, Query()] = None,
    attrs: AttrsQuery = None,
    lastN: Annotated[int | None, Query(ge=1, le=100_000)] = None,
    options: OptionsQuery = None,
    local: bool = False,
) -> Response:
    _check_params(request, frozenset({"timerel", "timeAt", "endTimeAt", "attrs", "lastN",
                                      "options", "local", "timeproperty"}))
    if request.query_params.get("timeproperty", "observedAt") != "observedAt":
        raise ld.OperationNotSupported("timeproperty: only observedAt is supported here",
                                       parameter="timeproperty")
    values_form = _temporal_options(options)
    wanted = _attrs(attrs)
    when = _time_clause(timerel, timeAt, endTimeAt)
    if not _URI.fullmatch(entityId):
        raise ld.BadRequestData("entityId must be a URI", parameter="entityId")
    latest = _lookup(services, entityId)
    if latest is None:
        raise ld.ResourceNotFound(f"no entity {entityId!r} in the live state",
                                  parameter="entityId")
    cap = services.settings.max_points
    if lastN is not None and lastN > cap:
        raise ld.BadRequestData(f"lastN must be at most {cap}", parameter="lastN")
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
        "type": latest.measurement,
    }
    partial: str | None = None
    if fields:
        tags = dict(latest.tags)
        spec = MEASUREMENTS.get(latest.measurement)
        for key in spec.tags if spec is not None else ():
            tags.setdefault(key, "")  # a tagless series, not its tagged siblings
        where = f'"gateway" = {quote_string(latest.gateway)} AND ' \
                f'"device" = {quote_string(latest.device)}'
        for key, value in sorted(tags.items()):
            where += f" AND {quote_ident(key)} = {quote_string(value)}"
        select = ", ".join(quote_ident(f) for f in fields)
        order = (f"ORDER BY time DESC LIMIT {lastN}" if lastN
                 else f"ORDER BY time ASC LIMIT {cap + 1}")
        statement = (f"SELECT {select} FROM {quote_ident(latest.measurement)} "  # noqa: S608
                     f"WHERE {where}{when} {order}")
        series = await services.influx.query(statement)
        rows = [row for s in series for row in s.values]
        if lastN:
            rows.reverse()
        elif len(rows) > cap:
            rows = rows[:cap]
            partial = f"date-time {iso(int(rows[0][0]))}-{iso(int(rows[-1][0]))}/{cap}"
        columns = series[0].columns if series else ["time", *fields]
        body.update(_temporal_attributes(latest, columns, rows, values_form))
    status = 206 if partial else 200
    return _respond(request, body, media, status=status,
                    headers={"Content-Range": partial} if partial else None)


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
