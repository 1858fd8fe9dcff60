"""NGSI-LD (ETSI GS CIM 009) read-only context source over the live state.

::

    GET /ngsi-ld/v1/entities                query: type, id, idPattern, attrs, q, georel,
                                            geometry, coordinates, geoproperty, limit, offset,
                                            count, options=keyValues|normalized
    GET /ngsi-ld/v1/entities/{entityId}     one entity (attrs, options)
    GET /ngsi-ld/v1/types[/{type}]          entity types (details=true: their attributes);
                                            {type} a term or a full IRI
    GET /ngsi-ld/v1/attributes[/{attrId}]   attribute names (details=true: types, counts)
    GET /ngsi-ld/v1/context.jsonld          the @context the Link header points to (public)

(and ``POST /ngsi-ld/v1/entityOperations/query`` in ``_ngsild_post.py``, the temporal
endpoints, history from InfluxDB, in ``_ngsild_temporal.py``.) :class:`Selection`,
:func:`select` and :func:`answer_entities` are the query all three share.

Entities come from the API's live state (``/v1/live``), never from InfluxDB per request;
``_ngsild.py`` holds the id scheme, the entity shapes and the errors, ``_ngsild_query.py`` the
q and geo-query subsets, ``_ngsild_http.py`` the media types and parameters every endpoint
shares. ``Accept: application/ld+json`` puts ``@context`` in the body; ``application/json``
(the default) sends it as a JSON-LD ``Link`` header instead; anything else is 406. Terms are
read and answered in the @context the request names (``ContextDep``). Every error is NGSI-LD
ProblemDetails, 401/403/429 included (same keys and rate limits as /v1).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

import msgspec
from fastapi import Depends, Path, Query, Request
from starlette.responses import Response

from api._deps import ServicesDep, Viewer
from api._services import Services
from api.standards import _ngsild as ld
from api.standards._ngsild_http import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    MAX_TERMS,
    URI,
    AttrsQuery,
    ContextDep,
    EntityIdPath,
    IdPattern,
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
from api.standards._ngsild_query import GeoQuery, parse_georel, parse_q
from api.standards._ngsild_query import Query as QueryTerms
from api.state import Latest

__all__ = [
    "EntityPage",
    "EntityPageQuery",
    "Selection",
    "SelectionParams",
    "SelectionQuery",
    "TypeQuery",
    "answer_entities",
    "page_links",
    "parse_ids",
    "parse_types",
    "router",
    "select",
]

_encoder: Final = msgspec.json.Encoder()

router = new_router()


@router.get("/context.jsonld", name="ngsild_context", response_model=None,
            summary="The JSON-LD @context of the NGSI-LD interface (public)",
            responses={200: {"description": "JSON-LD context",
                             "content": {ld.LD_JSON: {"schema": {"type": "object"}}}}})
async def context(request: Request) -> Response:
    check_params(request, frozenset())
    return Response(_encoder.encode(ld.context_document()), media_type=ld.LD_JSON,
                    headers={"Cache-Control": "public, max-age=3600"})


_ENTITY_PARAMS: Final = frozenset(
    {"id", "idPattern", "type", "attrs", "q", "georel", "geometry", "coordinates",
     "geoproperty", "limit", "offset", "count", "options", "format", "local"}
)
TypeQuery = Annotated[str | None, Query(max_length=2000,
                                        description="Comma-separated entity types")]


@dataclass(frozen=True, slots=True)
class Selection:
    """What a query selects (the GET parameters or a POST Query body), parsed and bounded."""

    ids: list[str] | None = None
    pattern: IdPattern | None = None
    types: list[str] | None = None
    wanted: frozenset[str] | None = None
    query: QueryTerms | None = None
    geo: GeoQuery | None = None
    geoproperty: str | None = None

    def is_empty(self) -> bool:
        return (self.ids is None and self.pattern is None and self.types is None
                and self.wanted is None and self.query is None and self.geo is None)


def parse_types(type: str | None, context: ld.Context) -> list[str] | None:
    if type is None:
        return None
    if re.search(r"[;()]", type):
        raise ld.OperationNotSupported(
            "type: only lists of types (',' or '|') are supported here", parameter="type")
    parts = re.split(r"[,|]", type)
    if len(parts) > MAX_TERMS:
        raise ld.TooComplexQuery(f"type: at most {MAX_TERMS} types", parameter="type")
    types = ld.names(parts, context)
    if not types:
        raise ld.BadRequestData("type is empty", parameter="type")
    return types


def parse_ids(id: str | None) -> list[str] | None:
    if id is None:
        return None
    ids = [i.strip() for i in id.split(",") if i.strip()]
    if len(ids) > MAX_LIMIT:
        raise ld.TooComplexQuery(f"id: at most {MAX_LIMIT} ids", parameter="id")
    if not ids or not all(URI.fullmatch(i) for i in ids):
        raise ld.BadRequestData("id must be a comma-separated list of URIs", parameter="id")
    return ids


@dataclass(frozen=True, slots=True)
class SelectionParams:
    """The selection query parameters of ``GET /entities`` and ``GET /temporal/entities``,
    as given: :meth:`selection` parses them (after the endpoint checked the parameter names,
    so that an unknown parameter is reported before a bad value)."""

    id: str | None
    id_pattern: str | None
    type: str | None
    attrs: str | None
    q: str | None
    georel: str | None
    geometry: str | None
    coordinates: str | None
    geoproperty: str | None

    def selection(self, context: ld.Context) -> Selection:
        return Selection(
            ids=parse_ids(self.id), pattern=id_pattern(self.id_pattern),
            types=parse_types(self.type, context), wanted=wanted_attrs(self.attrs, context),
            query=parse_q(self.q, context) if self.q is not None else None,
            geo=parse_georel(self.georel, self.geometry, self.coordinates),
            geoproperty=context.expand(self.geoproperty) if self.geoproperty is not None else None,
        )


def _selection_params(
    id: Annotated[str | None, Query(max_length=20_000,
                                    description="Comma-separated entity ids")] = None,
    idPattern: Annotated[str | None, Query(max_length=1000)] = None,
    type: TypeQuery = None,
    attrs: AttrsQuery = None,
    q: Annotated[str | None, Query(max_length=4000, description="NGSI-LD query subset")] = None,
    georel: Annotated[str | None, Query(max_length=200,
                                        description="near;maxDistance==<m>")] = None,
    geometry: Annotated[str | None, Query(max_length=50, description="Point")] = None,
    coordinates: Annotated[str | None, Query(max_length=200,
                                             description="[longitude,latitude]")] = None,
    geoproperty: Annotated[str | None, Query(max_length=200)] = None,
) -> SelectionParams:
    return SelectionParams(id, idPattern, type, attrs, q, georel, geometry, coordinates,
                           geoproperty)


SelectionQuery = Annotated[SelectionParams, Depends(_selection_params)]


@dataclass(frozen=True, slots=True)
class EntityPage:
    """Paging and representation of an entity list (``GET /entities`` and the POST query)."""

    limit: int
    offset: int
    count: bool
    options: str | None
    format: Literal["keyValues", "simplified", "normalized"] | None
    local: bool


def _entity_page(
    limit: Annotated[int, Query(ge=0, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    count: bool = False,
    options: OptionsQuery = None,
    format: Annotated[
        Literal["keyValues", "simplified", "normalized"] | None, Query()
    ] = None,
    local: bool = False,
) -> EntityPage:
    return EntityPage(limit, offset, count, options, format, local)


EntityPageQuery = Annotated[EntityPage, Depends(_entity_page)]


def select(services: Services, sel: Selection) -> list[tuple[str, Latest]]:
    """The entities of the live state a selection matches, sorted by id."""
    if sel.ids is not None:
        found = (lookup(services, i) for i in dict.fromkeys(sel.ids))
        candidates: Iterator[Latest] = (
            lt for lt in found
            if lt is not None and (sel.types is None or lt.measurement in sel.types)
        )
    else:
        candidates = all_series(services, sel.types)
    matched: list[tuple[str, Latest]] = []
    for latest in candidates:
        eid = ld.entity_id(latest.measurement, latest.gateway, latest.device, latest.tags)
        if sel.pattern is not None and sel.pattern.search(eid) is None:
            continue
        if sel.wanted is not None and not has_attrs(services, latest, sel.wanted):
            continue
        if sel.query is not None and not sel.query.matches(ld.attribute_values(latest)):
            continue
        if sel.geo is not None:
            if sel.geoproperty not in (None, "location"):
                continue  # no entity here has another GeoProperty
            where = ld.has_location(latest, entity_location(services, latest))
            if where is None or not sel.geo.matches(*where):
                continue
        matched.append((eid, latest))
    matched.sort(key=lambda pair: pair[0])
    return matched


def page_links(request: Request, offset: int, limit: int, total: int) -> dict[str, str]:
    """RFC 8288 ``Link`` rel=next/prev of a page (NGSI-LD 1.7 paging, limit/offset)."""
    links = []
    if limit and offset + limit < total:
        links.append(f'<{request.url.include_query_params(offset=offset + limit)}>; rel="next"')
    if limit and offset > 0:
        links.append(f'<{request.url.include_query_params(offset=max(0, offset - limit))}>; '
                     'rel="prev"')
    return {"Link": ", ".join(links)} if links else {}


def answer_entities(
    request: Request, services: Services, sel: Selection, *, media: str,
    context: ld.Context, page: EntityPage, key_values: bool,
) -> Response:
    """One page of the entities ``sel`` matches."""
    limit, offset, count = page.limit, page.offset, page.count
    if limit == 0 and not count:
        raise ld.BadRequestData("limit=0 is only allowed with count=true", parameter="limit")
    if sel.is_empty():
        raise ld.BadRequestData(
            "a query needs at least one of type, id, idPattern, attrs, q or a geo-query",
            parameter="type")
    matched = select(services, sel)
    shown = matched[offset: offset + limit]
    body = [ld.entity(lt, entity_location(services, lt), attrs=sel.wanted,
                      key_values=key_values, context=context)
            for _, lt in shown]
    headers = {"NGSILD-Results-Count": str(len(matched))} if count else {}
    if request.method == "GET":
        headers.update(page_links(request, offset, limit, len(matched)))
    return respond(request, body, media, headers=headers, context_url=context.url)


@router.get("/entities", response_model=None, responses=ngsi_responses("Entities"),
            summary="Query entities (NGSI-LD 5.7.2) from the live state")
async def query_entities(
    request: Request,
    services: ServicesDep,
    _caller: Viewer,
    media: Media,
    context: ContextDep,
    params: SelectionQuery,
    page: EntityPageQuery,
) -> Response:
    check_params(request, _ENTITY_PARAMS)
    key_values = simplified(page.options, page.format)
    return answer_entities(request, services, params.selection(context), media=media,
                           context=context, page=page, key_values=key_values)


@router.get("/entities/{entityId}", response_model=None, responses=ngsi_responses("Entity"),
            summary="Retrieve one entity (NGSI-LD 5.7.1) from the live state")
async def retrieve_entity(
    request: Request,
    services: ServicesDep,
    _caller: Viewer,
    media: Media,
    context: ContextDep,
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
    wanted = wanted_attrs(attrs, context)
    if not URI.fullmatch(entityId):
        raise ld.BadRequestData("entityId must be a URI", parameter="entityId")
    latest = lookup(services, entityId)
    if latest is None or (type is not None and context.expand(type) != latest.measurement):
        raise ld.ResourceNotFound(f"no entity {entityId!r}", parameter="entityId")
    if wanted is not None and not has_attrs(services, latest, wanted):
        raise ld.ResourceNotFound(f"entity {entityId!r} has none of the attributes {attrs!r}",
                                  parameter="attrs")
    body = ld.entity(latest, entity_location(services, latest), attrs=wanted,
                     key_values=key_values, context=context)
    return respond(request, body, media, context_url=context.url)


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
    context: ContextDep, details: DetailsQuery = False, local: bool = False,
) -> Response:
    check_params(request, frozenset({"details", "local"}))
    catalogue = _catalogue(services)
    term = context.compact
    if not details:
        body: Any = {"id": _list_id("EntityTypeList"), "type": "EntityTypeList",
                     "typeList": sorted(term(name) for name in catalogue)}
    else:
        body = [{"id": ld.term_iri(name), "type": "EntityType", "typeName": term(name),
                 "attributeNames": sorted(term(a) for a in attributes)}
                for name, attributes in sorted(catalogue.items())]
    return respond(request, body, media, context_url=context.url)


@router.get("/types/{type:path}", response_model=None, responses=ngsi_responses("Entity type"),
            summary="One entity type with its attributes and entity count (NGSI-LD 5.7.7)")
async def retrieve_type(
    request: Request, services: ServicesDep, _caller: Viewer, media: Media,
    context: ContextDep, type: Annotated[str, Path(max_length=1024)],
    local: bool = False,
) -> Response:
    check_params(request, frozenset({"local"}))
    name = context.expand(type)
    entities = services.live.by_measurement.get(name, {})
    if not entities:
        raise ld.ResourceNotFound(f"no entities of type {type!r}", parameter="type")
    attributes = _catalogue(services).get(name, {})
    body = {
        "id": ld.term_iri(name), "type": "EntityTypeInfo", "typeName": context.compact(name),
        "entityCount": len(entities),
        "attributeDetails": [
            {"id": ld.term_iri(attr), "type": "Attribute",
             "attributeName": context.compact(attr), "attributeTypes": sorted(kinds)}
            for attr, kinds in sorted(attributes.items())
        ],
    }
    return respond(request, body, media, context_url=context.url)


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


def _attribute(context: ld.Context, name: str, kinds: set[str], types: set[str],
               n: int) -> dict[str, Any]:
    return {"id": ld.term_iri(name), "type": "Attribute", "attributeName": context.compact(name),
            "attributeCount": n, "attributeTypes": sorted(kinds),
            "typeNames": sorted(context.compact(t) for t in types)}


@router.get("/attributes", response_model=None, responses=ngsi_responses("Attributes"),
            summary="Available attributes (NGSI-LD 5.7.8/5.7.9)")
async def list_attributes(
    request: Request, services: ServicesDep, _caller: Viewer, media: Media,
    context: ContextDep, details: DetailsQuery = False, local: bool = False,
) -> Response:
    check_params(request, frozenset({"details", "local"}))
    index = _attribute_index(services)
    if not details:
        body: Any = {"id": _list_id("AttributeList"), "type": "AttributeList",
                     "attributeList": sorted(context.compact(name) for name in index)}
    else:
        body = [_attribute(context, name, *index[name]) for name in sorted(index)]
    return respond(request, body, media, context_url=context.url)


@router.get("/attributes/{attrId:path}", response_model=None, responses=ngsi_responses("Attribute"),
            summary="One attribute: its types, entity types and count (NGSI-LD 5.7.10)")
async def retrieve_attribute(
    request: Request, services: ServicesDep, _caller: Viewer, media: Media,
    context: ContextDep, attrId: Annotated[str, Path(max_length=1024)],
    local: bool = False,
) -> Response:
    check_params(request, frozenset({"local"}))
    name = context.expand(attrId)
    found = _attribute_index(services).get(name)
    if found is None:
        raise ld.ResourceNotFound(f"no attribute {attrId!r}", parameter="attrId")
    return respond(request, _attribute(context, name, *found), media, context_url=context.url)
