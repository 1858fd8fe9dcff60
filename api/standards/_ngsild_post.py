"""NGSI-LD query by POST (``POST /ngsi-ld/v1/entityOperations/query``, clause 5.7.2 with a
Query body, clause 5.2.23), over the same selection as ``GET /entities``.

The body is read up to :data:`MAX_QUERY_BYTES` whatever its ``Content-Length`` claims;
``application/ld+json`` bodies name their @context inline (by URL), ``application/json``
ones in the ``Link`` header. What the GET subset does not evaluate (``temporalQ``,
``scopeQ``, ...) is ``OperationNotSupported``, an unknown member ``BadRequestData``.
"""

from __future__ import annotations

import json
from typing import Any, Final

from fastapi import Request
from starlette.responses import Response

from api._deps import ServicesDep, Viewer
from api.standards import _ngsild as ld
from api.standards._ngsild_http import (
    MAX_TERMS,
    Media,
    check_params,
    check_tenant,
    id_pattern,
    link_contexts,
    new_router,
    ngsi_responses,
    simplified,
)
from api.standards._ngsild_query import GeoQuery, parse_georel, parse_q
from api.standards._ngsild_routes import (
    EntityPageQuery,
    Selection,
    answer_entities,
    parse_ids,
    parse_types,
)

__all__ = ["MAX_QUERY_BYTES", "parse_query_body", "router"]

router = new_router()


_QUERY_MEMBERS: Final = frozenset({"type", "entities", "attrs", "q", "geoQ", "@context"})
_QUERY_UNSUPPORTED: Final = frozenset(
    {"temporalQ", "scopeQ", "lang", "csf", "pick", "omit", "datasetId", "containedBy", "join",
     "joinLevel", "expandValues", "localOnly"}
)
#: Cost cap of a Query body (bytes); its lists are capped like the GET parameters.
MAX_QUERY_BYTES: Final = 32_768


def _string(body: dict[str, Any], key: str, limit: int) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise ld.BadRequestData(f"Query.{key} must be a string of at most {limit} characters",
                                parameter=key)
    return value


def _string_list(value: Any, key: str) -> list[str]:
    if not isinstance(value, list) or not value or len(value) > MAX_TERMS or not all(
            isinstance(v, str) and 0 < len(v) <= 1024 for v in value):
        raise ld.BadRequestData(f"Query.{key} must be a list of 1 to {MAX_TERMS} names",
                                parameter=key)
    return value


def parse_query_body(raw: bytes, context: ld.Context) -> Selection:
    """A Query data type (clause 5.2.23) as a :class:`Selection`; what the GET subset does
    not evaluate is ``OperationNotSupported``, an unknown member ``BadRequestData``."""
    if len(raw) > MAX_QUERY_BYTES:
        raise ld.TooComplexQuery(f"the Query body is larger than {MAX_QUERY_BYTES} bytes")
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ld.InvalidRequest("the body is not JSON") from exc
    if not isinstance(body, dict) or body.get("type") != "Query":
        raise ld.BadRequestData('the body must be a Query object ({"type": "Query", ...})',
                                parameter="type")
    for key in body:
        if key in _QUERY_UNSUPPORTED:
            raise ld.OperationNotSupported(f"Query.{key} is not supported here", parameter=key)
        if key not in _QUERY_MEMBERS:
            raise ld.BadRequestData(f"unknown Query member {str(key)[:100]!r}", parameter=key)
    ids: list[str] = []
    types: list[str] = []
    pattern: str | None = None
    entities = body.get("entities")
    if entities is not None:
        if not isinstance(entities, list) or not entities or len(entities) > MAX_TERMS:
            raise ld.BadRequestData(f"Query.entities must be a list of 1 to {MAX_TERMS} "
                                    "EntitySelectors", parameter="entities")
        for selector in entities:
            if not isinstance(selector, dict) or not set(selector) <= {"id", "idPattern",
                                                                        "type"}:
                raise ld.BadRequestData("an EntitySelector has id, idPattern and type only",
                                        parameter="entities")
            if "type" not in selector:
                raise ld.BadRequestData("an EntitySelector needs a type", parameter="entities")
            types.extend(parse_types(_string(selector, "type", 2000), context) or [])
            if "id" in selector:
                ids.extend(parse_ids(_string(selector, "id", 1024)) or [])
            if "idPattern" in selector:
                if pattern is not None:
                    raise ld.OperationNotSupported("one idPattern per Query here",
                                                   parameter="idPattern")
                pattern = _string(selector, "idPattern", 1000)
    attrs = body.get("attrs")
    wanted = (frozenset(ld.names(_string_list(attrs, "attrs"), context))
              if attrs is not None else None)
    q = _string(body, "q", 4000)
    geo: GeoQuery | None = None
    geoproperty: str | None = None
    geo_q = body.get("geoQ")
    if geo_q is not None:
        if not isinstance(geo_q, dict) or not set(geo_q) <= {
                "geometry", "coordinates", "georel", "geoproperty"}:
            raise ld.BadRequestData("Query.geoQ has geometry, coordinates, georel and "
                                    "geoproperty only", parameter="geoQ")
        coordinates = geo_q.get("coordinates")
        if not isinstance(coordinates, str):
            coordinates = json.dumps(coordinates)[:200]
        geo = parse_georel(_string(geo_q, "georel", 200), _string(geo_q, "geometry", 50),
                           coordinates)
        prop = _string(geo_q, "geoproperty", 200)
        geoproperty = context.expand(prop) if prop is not None else None
    return Selection(
        ids=ids or None, pattern=id_pattern(pattern), types=types or None, wanted=wanted,
        query=parse_q(q, context) if q is not None else None, geo=geo, geoproperty=geoproperty,
    )


@router.post("/entityOperations/query", response_model=None,
             responses=ngsi_responses("Entities"),
             summary="Query entities by POST (NGSI-LD 5.7.2 with a Query body)")
async def post_query(
    request: Request,
    services: ServicesDep,
    _caller: Viewer,
    media: Media,
    page: EntityPageQuery,
) -> Response:
    check_tenant(request)
    check_params(request, frozenset({"limit", "offset", "count", "options", "format",
                                      "local"}))
    key_values = simplified(page.options, page.format)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in (ld.JSON, ld.LD_JSON):
        raise ld.InvalidRequest("Content-Type must be application/json or application/ld+json",
                                status=415)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_QUERY_BYTES:
        raise ld.TooComplexQuery(f"the Query body is larger than {MAX_QUERY_BYTES} bytes")
    raw = bytearray()
    async for chunk in request.stream():
        raw.extend(chunk)
        if len(raw) > MAX_QUERY_BYTES:
            raise ld.TooComplexQuery(f"the Query body is larger than {MAX_QUERY_BYTES} bytes")
    own = str(request.url_for("ngsild_context"))
    if content_type == ld.LD_JSON:
        # The @context travels in the body (a Link header is then not allowed, 6.3.5).
        try:
            inline = json.loads(raw).get("@context")
        except (ValueError, AttributeError):
            inline = None
        urls = inline if isinstance(inline, list) else [inline] if inline is not None else []
        if not all(isinstance(u, str) for u in urls):
            raise ld.OperationNotSupported("an inline @context object is not supported here; "
                                           "name the context by URL", parameter="@context")
        context = ld.Context.choose(urls, own)
    else:
        context = ld.Context.choose(link_contexts(request.headers.get("link")), own)
    sel = parse_query_body(bytes(raw), context)
    return answer_entities(request, services, sel, media=media, context=context, page=page,
                           key_values=key_values)
