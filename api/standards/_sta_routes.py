"""OGC SensorThings API 1.1, read side, under ``/sta/v1.1`` (viewer key, like ``/v1``).

::

    GET /sta/v1.1                                   service root (entity sets, conformance)
    GET /sta/v1.1/<Set>                             Things, Locations, Sensors,
                                                    ObservedProperties, Datastreams,
                                                    FeaturesOfInterest
    GET /sta/v1.1/<Set>('<id>')                     one entity
    GET /sta/v1.1/<Set>('<id>')/<Navigation>        e.g. Things('g')/Datastreams,
                                                    Datastreams('d')/Observations,
                                                    Things('g')/HistoricalLocations
    query options: $filter $select $expand $orderby $top $skip $count (``_sta.py``)
    POST/PUT/PATCH/DELETE                           405: read side only

What each entity is made of (ids: ``_sta.py``)::

    Thing               a gateway (inventory)        Sensor            a device
    Location            gateway / device location;   ObservedProperty  a vocabulary field
                        a vehicle's live position    Datastream        device + field
    HistoricalLocation  a vehicle's stored positions (+ reading tags) of the live state
                        (InfluxDB)                   Observation       a stored point
    FeatureOfInterest   where a device observes                        (InfluxDB)

Observations and HistoricalLocations are read from InfluxDB through
:class:`api.storage.ObservationQuery` / :func:`api.storage.select_entity_history`, one series
per query, so they are served below their Datastream / Thing (the collections
``/Observations`` and ``/HistoricalLocations`` would scan every series: refused with 400,
type ``urn:smartcity:problem:not-supported``).
A request runs at most :data:`MAX_QUERIES` InfluxDB queries (``$expand`` of Observations
included); past that it is refused, not truncated.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Final
from urllib.parse import urlencode

import msgspec
from fastapi import APIRouter, Request
from starlette.responses import Response

from api._deps import ServicesDep, Viewer
from api._errors import BadParameter, NotFound, ProblemError
from api.standards import _sta as sta
from api.standards._sta_world import NAVIGATION, SETS, Row, World, page

__all__ = ["router"]

_PREFIX: Final = "/sta/v1.1"
_encoder: Final = msgspec.json.Encoder()

router = APIRouter(prefix=_PREFIX, tags=["sensorthings"])


# ---------------------------------------------------------------------------------------------
# Paging, $select, $expand, rendering


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + _PREFIX


def _quoted(id_: str) -> str:
    return "'" + id_.replace("'", "''") + "'"


async def render(world: World, request: Request, row: Row, options: sta.Options,
                 ) -> dict[str, Any]:
    """The JSON of one entity: @iot.id, @iot.selfLink, properties, navigation links, then
    the expanded navigation properties; ``$select`` keeps only the properties it names."""
    self_link = f"{_base(request)}/{row.set}({_quoted(row.id)})"
    body: dict[str, Any] = {"@iot.id": row.id, "@iot.selfLink": self_link}
    body.update({k: v for k, v in row.props.items() if not k.startswith("_")})
    for name in NAVIGATION[row.set]:
        body[f"{name}@iot.navigationLink"] = f"{self_link}/{name}"
    if options.select is not None:
        unknown = [s for s in options.select if s not in body and s not in NAVIGATION[row.set]
                   and s != "id"]
        if unknown:
            raise BadParameter(f"$select: {row.set} has no property {unknown[0]!r}",
                               parameter="$select")
        keep = {"@iot.id" if s == "id" else s for s in options.select}
        body = {k: v for k, v in body.items()
                if k in keep or (k.split("@")[0] in keep and k.endswith("navigationLink"))}
    for item in options.expand:
        target = NAVIGATION[row.set].get(item.name)
        if target is None:
            raise BadParameter(f"$expand: {row.set} has no navigation property {item.name!r}",
                               parameter="$expand")
        _set, many = target
        inner = item.options
        if not many:
            related = world.related(row, item.name)
            if related:
                body[item.name] = await render(world, request, related[0], inner)
            continue
        rows, more, total = await world.navigate(row, item.name, inner)
        body[item.name] = [await render(world, request, r, inner.__class__(
            select=inner.select, expand=inner.expand)) for r in rows]
        if total is not None:
            body[f"{item.name}@iot.count"] = total
        if more:
            query = urlencode({**inner.raw, "$top": str(inner.top),
                               "$skip": str(inner.skip + inner.top)})
            body[f"{item.name}@iot.nextLink"] = f"{self_link}/{item.name}?{query}"
    return body


def _answer(body: Any) -> Response:
    return Response(_encoder.encode(body), media_type="application/json")


# ---------------------------------------------------------------------------------------------
# Routes

_SEGMENT: Final = re.compile(r"([A-Za-z]{1,40})(?:\((?:'((?:[^']|''){0,1024})'|([0-9]{1,19}))\))?")


def _parse_path(path: str) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for segment in path.strip("/").split("/"):
        if segment in ("$value", "$ref"):
            raise sta.NotImplementedHere(f"{segment} is not supported here")
        match = _SEGMENT.fullmatch(segment)
        if match is None:
            raise NotFound(f"no SensorThings resource {segment[:100]!r}")
        id_ = match.group(2)
        if id_ is not None:
            id_ = id_.replace("''", "'")
        elif match.group(3) is not None:
            id_ = match.group(3)
        out.append((match.group(1), id_))
    if len(out) > 4:
        raise BadParameter("a resource path of at most 4 segments", parameter="path")
    return out


def _options(request: Request) -> sta.Options:
    params: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name in params:
            raise BadParameter(f"{name[:50]} is given twice", parameter=name[:50])
        params[name] = value
    return sta.parse_options(params)


async def _resolve(world: World, request: Request, path: str, options: sta.Options,
                   ) -> dict[str, Any]:
    segments = _parse_path(path)
    name, id_ = segments[0]
    if name not in SETS:
        raise NotFound(f"no entity set {name[:50]!r}: " + ", ".join(SETS))
    if id_ is None:
        if len(segments) > 1:
            raise NotFound(f"{name} needs an id before /{segments[1][0][:50]}")
        if name in ("Observations", "HistoricalLocations"):
            raise sta.NotImplementedHere(
                f"the collection /{name} is not served (it would scan every series): read "
                f"{name} through their {'Datastream' if name == 'Observations' else 'Thing'}"
                f", e.g. /{'Datastreams' if name == 'Observations' else 'Things'}('<id>')/"
                f"{name}")
        rows, more, total = page(list(world.rows(name).values()), options)
        return await _collection(world, request, rows, more, total, options)
    row = await world.find(name, id_)
    for i, (nav, nav_id) in enumerate(segments[1:], start=1):
        target = NAVIGATION[row.set].get(nav)
        if target is None:
            if i == len(segments) - 1 and nav_id is None and nav in row.props \
                    and not nav.startswith("_"):
                return {nav: row.props[nav]}
            raise NotFound(f"{row.set} has no navigation property {nav[:50]!r}")
        _set, many = target
        last = i == len(segments) - 1
        if not many:
            if nav_id is not None:
                raise NotFound(f"{nav} is one entity: no id after it")
            related = world.related(row, nav)
            if not related:
                raise NotFound(f"{row.set}({row.id}) has no {nav}")
            row = related[0]
            continue
        if nav_id is not None:
            candidates = [r for r in world.related(row, nav) if r.id == nav_id] \
                if nav not in ("Observations", "HistoricalLocations") else \
                [await world.find(nav, nav_id)]
            if not candidates:
                raise NotFound(f"no {nav} {nav_id[:200]!r} of {row.set}({row.id})")
            row = candidates[0]
            continue
        if not last:
            raise NotFound(f"{nav} is a collection: give an id before going further")
        rows, more, total = await world.navigate(row, nav, options)
        return await _collection(world, request, rows, more, total, options)
    return await render(world, request, row, options)


async def _collection(world: World, request: Request, rows: list[Row], more: bool,
                      total: int | None, options: sta.Options) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if total is not None:
        body["@iot.count"] = total
    each = dataclasses.replace(options, filter=None, orderby=[], count=False)
    body["value"] = [await render(world, request, r, each) for r in rows]
    if more:
        body["@iot.nextLink"] = str(request.url.include_query_params(
            **{"$skip": str(options.skip + options.top), "$top": str(options.top)}))
    return body


@router.get("", response_model=None, summary="SensorThings service root (entity sets)")
async def service_root(request: Request, _caller: Viewer) -> Response:
    if request.query_params:
        raise BadParameter("the service root takes no query options",
                           parameter=next(iter(request.query_params)))
    base = _base(request)
    return _answer({
        "value": [{"name": name, "url": f"{base}/{name}"} for name in SETS],
        "serverSettings": {"conformance": [
            "http://www.opengis.net/spec/iot_sensing/1.1/req/datamodel",
            "http://www.opengis.net/spec/iot_sensing/1.1/req/resource-path/resource-path-to-entities",
            "http://www.opengis.net/spec/iot_sensing/1.1/req/request-data",
        ]},
    })


@router.get("/{path:path}", response_model=None,
            summary="SensorThings entities, navigation and query options (read side)")
async def read(request: Request, services: ServicesDep, _caller: Viewer, path: str) -> Response:
    if not path.strip("/"):
        return await service_root(request, _caller)
    options = _options(request)
    world = World(services)
    return _answer(await _resolve(world, request, path, options))


@router.api_route("/{path:path}", methods=["POST", "PUT", "PATCH", "DELETE"],
                  include_in_schema=False)
async def write(request: Request, path: str) -> Response:
    raise _ReadOnly("this SensorThings API is read-only (no create, update or delete, no MQTT)",
                    headers={"Allow": "GET"})


class _ReadOnly(ProblemError):
    status = 405
    slug = "method-not-allowed"
    title = "Method not allowed"

