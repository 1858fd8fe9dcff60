"""NGSI-LD (ETSI GS CIM 009) read-only context source over the live state.

::

    GET /ngsi-ld/v1/entities                query: type, id, idPattern, attrs, q, georel,
                                            geometry, coordinates, geoproperty, limit, offset,
                                            count, options=keyValues|normalized
    GET /ngsi-ld/v1/entities/{entityId}     one entity (attrs, options)
    GET /ngsi-ld/v1/types[/{type}]          entity types (details=true: their attributes)
    GET /ngsi-ld/v1/attributes[/{attrId}]   attribute names (details=true: types, counts)
    GET /ngsi-ld/v1/context.jsonld          the @context the Link header points to (public)

(and ``GET /ngsi-ld/v1/temporal/entities/{entityId}``, history from InfluxDB, in
``_ngsild_temporal.py``.)

Entities come from the API's live state (``/v1/live``), never from InfluxDB per request;
``_ngsild.py`` holds the id scheme, the entity shapes and the errors, ``_ngsild_query.py`` the
q and geo-query subsets, ``_ngsild_http.py`` the media types and parameters every endpoint
shares. ``Accept: application/ld+json`` puts ``@context`` in the body; ``application/json``
(the default) sends it as a JSON-LD ``Link`` header instead; anything else is 406. Errors are
NGSI-LD ProblemDetails; 401/403/429 stay the platform's (same keys and rate limits as /v1).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Annotated, Any, Final, Literal

import msgspec
from fastapi import Path, Query, Request
from starlette.responses import Response

from api._deps import ServicesDep, Viewer
from api._services import Services
from api.standards import _ngsild as ld
from api.standards._ngsild_http import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    URI,
    AttrsQuery,
    EntityIdPath,
    Media,
    OptionsQuery,
    all_series,
    check_params,
    entity_location,
    has_attrs,
    id_pattern,
    lookup,
    new_router,
    ngsi_responses,
    respond,
    simplified,
    wanted_attrs,
)
from api.standards._ngsild_query import parse_georel, parse_q
from api.state import Latest

__all__ = ["router"]

_encoder: Final = msgspec.json.Encoder()

router = new_router()


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


@router.get("/entities", response_model=None, responses=ngsi_responses("Entities"),
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
    check_params(request, _ENTITY_PARAMS)
    key_values = simplified(options, format)
    wanted = wanted_attrs(attrs)
    query = parse_q(q) if q is not None else None
    geo = parse_georel(georel, geometry, coordinates)
    pattern = id_pattern(idPattern)
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
        if not ids or not all(URI.fullmatch(i) for i in ids):
            raise ld.BadRequestData("id must be a comma-separated list of URIs", parameter="id")
        found = (lookup(services, i) for i in dict.fromkeys(ids))
        candidates: Iterator[Latest] = (
            lt for lt in found if lt is not None and (types is None or lt.measurement in types)
        )
    else:
        candidates = all_series(services, types)
    matched: list[tuple[str, Latest]] = []
    for latest in candidates:
        eid = ld.entity_id(latest.measurement, latest.gateway, latest.device, latest.tags)
        if pattern is not None and pattern.search(eid) is None:
            continue
        if wanted is not None and not has_attrs(services, latest, wanted):
            continue
        if query is not None and not query.matches(ld.attribute_values(latest)):
            continue
        if geo is not None:
            if geoproperty not in (None, "location"):
                continue  # no entity here has another GeoProperty
            where = ld.has_location(latest, entity_location(services, latest))
            if where is None or not geo.matches(*where):
                continue
        matched.append((eid, latest))
    matched.sort(key=lambda pair: pair[0])
    page = matched[offset: offset + limit]
    body = [ld.entity(lt, entity_location(services, lt), attrs=wanted, key_values=key_values)
            for _, lt in page]
    headers = {"NGSILD-Results-Count": str(len(matched))} if count else None
    return respond(request, body, media, headers=headers)


@router.get("/entities/{entityId}", response_model=None, responses=ngsi_responses("Entity"),
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
    check_params(request, frozenset({"attrs", "type", "options", "format", "local"}))
    key_values = simplified(options, format)
    wanted = wanted_attrs(attrs)
    if not URI.fullmatch(entityId):
        raise ld.BadRequestData("entityId must be a URI", parameter="entityId")
    latest = lookup(services, entityId)
    if latest is None or (type is not None and ld.expand_term(type) != latest.measurement):
        raise ld.ResourceNotFound(f"no entity {entityId!r}", parameter="entityId")
    if wanted is not None and not has_attrs(services, latest, wanted):
        raise ld.ResourceNotFound(f"entity {entityId!r} has none of the attributes {attrs!r}",
                                  parameter="attrs")
    body = ld.entity(latest, entity_location(services, latest), attrs=wanted, key_values=key_values)
    return respond(request, body, media)


def _present(services: Services, latest: Latest) -> dict[str, str]:
    """The attributes one entity shows: name -> attribute type."""
    present = dict.fromkeys(ld.attribute_values(latest), "Property")
    if ld.has_location(latest, entity_location(services, latest)):
        present["location"] = "GeoProperty"
    return present


def _catalogue(services: Services) -> dict[str, dict[str, set[str]]]:
    """type -> attribute -> attribute types, over the live state."""
    out: dict[str, dict[str, set[str]]] = {}
    for latest in all_series(services, None):
        attributes = out.setdefault(latest.measurement, {})
        for name, kind in _present(services, latest).items():
            attributes.setdefault(name, set()).add(kind)
    return out


def _list_id(kind: str) -> str:
    return f"urn:ngsi-ld:{kind}:{uuid.uuid4().hex}"


DetailsQuery = Annotated[bool, Query(description="Detailed objects instead of names")]


@router.get("/types", response_model=None, responses=ngsi_responses("Entity types"),
            summary="Available entity types (NGSI-LD 5.7.5/5.7.6)")
async def list_types(
    request: Request, services: ServicesDep, _caller: Viewer, media: Media,
    details: DetailsQuery = False, local: bool = False,
) -> Response:
    check_params(request, frozenset({"details", "local"}))
    catalogue = _catalogue(services)
    if not details:
        body: Any = {"id": _list_id("EntityTypeList"), "type": "EntityTypeList",
                     "typeList": sorted(catalogue)}
    else:
        body = [{"id": ld.term_iri(name), "type": "EntityType", "typeName": name,
                 "attributeNames": sorted(attributes)}
                for name, attributes in sorted(catalogue.items())]
    return respond(request, body, media)


@router.get("/types/{type}", response_model=None, responses=ngsi_responses("Entity type"),
            summary="One entity type with its attributes and entity count (NGSI-LD 5.7.7)")
async def retrieve_type(
    request: Request, services: ServicesDep, _caller: Viewer, media: Media,
    type: Annotated[str, Path(max_length=1024)],
    local: bool = False,
) -> Response:
    check_params(request, frozenset({"local"}))
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
    return respond(request, body, media)


def _attribute_index(services: Services) -> dict[str, tuple[set[str], set[str], int]]:
    """attribute -> (attribute types, entity types, entity count)."""
    index: dict[str, tuple[set[str], set[str], int]] = {}
    for latest in all_series(services, None):
        for name, kind in _present(services, latest).items():
            kinds, types, n = index.get(name, (set(), set(), 0))
            kinds.add(kind)
            types.add(latest.measurement)
            index[name] = (kinds, types, n + 1)
    return index


def _attribute(name: str, kinds: set[str], types: set[str], n: int) -> dict[str, Any]:
    return {"id": ld.term_iri(name), "type": "Attribute", "attributeName": name,
            "attributeCount": n, "attributeTypes": sorted(kinds), "typeNames": sorted(types)}


@router.get("/attributes", response_model=None, responses=ngsi_responses("Attributes"),
            summary="Available attributes (NGSI-LD 5.7.8/5.7.9)")
async def list_attributes(
    request: Request, services: ServicesDep, _caller: Viewer, media: Media,
    details: DetailsQuery = False, local: bool = False,
) -> Response:
    check_params(request, frozenset({"details", "local"}))
    index = _attribute_index(services)
    if not details:
        body: Any = {"id": _list_id("AttributeList"), "type": "AttributeList",
                     "attributeList": sorted(index)}
    else:
        body = [_attribute(name, *index[name]) for name in sorted(index)]
    return respond(request, body, media)


@router.get("/attributes/{attrId}", response_model=None, responses=ngsi_responses("Attribute"),
            summary="One attribute: its types, entity types and count (NGSI-LD 5.7.10)")
async def retrieve_attribute(
    request: Request, services: ServicesDep, _caller: Viewer, media: Media,
    attrId: Annotated[str, Path(max_length=1024)],
    local: bool = False,
) -> Response:
    check_params(request, frozenset({"local"}))
    name = ld.expand_term(attrId)
    found = _attribute_index(services).get(name)
    if found is None:
        raise ld.ResourceNotFound(f"no attribute {attrId!r}", parameter="attrId")
    return respond(request, _attribute(name, *found), media)
