"""What every NGSI-LD endpoint shares: its router, media types, parameters and lookups.

- :func:`new_router`: the prefix ``/ngsi-ld/v1``, and parameter errors as NGSI-LD
  ``BadRequestData`` instead of the platform's;
- :func:`respond`: ``Accept: application/ld+json`` puts ``@context`` in the body;
  ``application/json`` (the default) sends it as a JSON-LD ``Link`` header instead;
- :func:`check_params`: an NGSI-LD parameter this subset does not implement is 422, any
  other unknown parameter 400, never ignored;
- :data:`ContextDep`: the @context of the request's ``Link`` header
  (:class:`api.standards._ngsild.Context`), used to expand its terms and compact the answer;
- :data:`fallback`: the last router of the interface, so that an unknown path is an NGSI-LD
  ``ResourceNotFound`` and a write an ``OperationNotSupported`` 405, answered directly
  (never a 307 to the path without its trailing slash first);
- lookups of entities in the live state (:func:`lookup`, :func:`all_series`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine, Iterator
from typing import Annotated, Any, Final, Literal, Protocol

import msgspec
import re2
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.responses import Response

from api._errors import PROBLEM_MEDIA, PROBLEM_SCHEMA
from api._services import Services
from api.standards import _ngsild as ld
from api.state import Latest, series_key
from telemetry import Location

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "MAX_TERMS",
    "URI",
    "AttrsQuery",
    "ContextDep",
    "EntityIdPath",
    "IdPattern",
    "Media",
    "NgsiLdRoute",
    "OptionsQuery",
    "all_series",
    "check_params",
    "check_tenant",
    "entity_location",
    "fallback",
    "has_attrs",
    "id_pattern",
    "link_contexts",
    "lookup",
    "new_router",
    "ngsi_responses",
    "respond",
    "simplified",
    "wanted_attrs",
]

MAX_LIMIT: Final = 1000
DEFAULT_LIMIT: Final = 20
#: Cost cap: names in ``attrs``/``type``, ids in ``id``.
MAX_TERMS: Final = 100
_encoder: Final = msgspec.json.Encoder()
#: The platform's problem schema, as NGSI-LD ProblemDetails (no ``parameter`` is promised).
_PROBLEM_DOC: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        k: v for k, v in PROBLEM_SCHEMA["properties"].items() if k != "parameter"
    },
    "required": ["type", "status", "detail"],
}
#: Query parameters NGSI-LD defines that this subset does not implement: 422, never ignored.
_UNSUPPORTED: Final = frozenset(
    {"csf", "scopeQ", "lang", "pick", "omit", "join", "joinLevel", "containedBy",
     "datasetId", "geometryProperty", "expandValues", "entityMap", "collect", "typePattern",
     "aggrMethods", "aggrPeriodDuration", "timeproperty", "dataset"}
)


class NgsiLdRoute(APIRoute):
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


def new_router() -> APIRouter:
    """A router of the NGSI-LD interface (its prefix, tag and parameter errors)."""
    return APIRouter(prefix="/ngsi-ld/v1", tags=["ngsi-ld"], route_class=NgsiLdRoute)


def ngsi_responses(description: str) -> dict[int | str, Any]:
    media: dict[str, Any] = {"schema": {}}
    problem = {PROBLEM_MEDIA: {"schema": _PROBLEM_DOC}}
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


# Dependencies are async: a plain def one costs a thread-pool hop on every request.
async def _media(request: Request) -> Literal["application/json", "application/ld+json"]:
    return ld.negotiate(request.headers.get("accept"))


Media = Annotated[Literal["application/json", "application/ld+json"], Depends(_media)]
OptionsQuery = Annotated[
    str | None,
    Query(max_length=200, description="keyValues (or simplified) or normalized (default)"),
]
EntityIdPath = Annotated[str, Path(max_length=1024, description="Entity id (URN)")]
AttrsQuery = Annotated[
    str | None, Query(max_length=4000, description="Comma-separated attribute names")
]


def _context_url(request: Request) -> str:
    return str(request.url_for("ngsild_context"))


def _split_outside(text: str, sep: str) -> list[str]:
    """Split at ``sep`` outside ``"..."`` and ``<...>`` (one pass: linear in the text)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = angled = False
    for ch in text:
        if ch == '"' and not angled:
            quoted = not quoted
        elif ch == "<" and not quoted:
            angled = True
        elif ch == ">" and not quoted:
            angled = False
        if ch == sep and not quoted and not angled:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if quoted or angled:
        raise ld.BadRequestData("Link: unbalanced quotes or angle brackets", parameter="Link")
    parts.append("".join(current))
    return parts


def link_contexts(header: str | None) -> list[str]:
    """The @context URLs of a ``Link`` header (RFC 8288, ``rel`` the JSON-LD context)."""
    if header is None:
        return []
    if len(header) > 2000:
        raise ld.BadRequestData("Link: longer than 2000 characters", parameter="Link")
    urls = []
    for link in _split_outside(header, ","):
        target, *params = (p.strip() for p in _split_outside(link, ";"))
        if not (target.startswith("<") and target.endswith(">")):
            raise ld.BadRequestData("Link: not an RFC 8288 link header", parameter="Link")
        rels: list[str] = []
        for param in params:
            key, eq, value = param.partition("=")
            if not eq:
                raise ld.BadRequestData("Link: not an RFC 8288 link header", parameter="Link")
            if key.strip().lower() == "rel":
                rels.extend(value.strip().strip('"').split())
        if ld.LINK_REL in rels:
            urls.append(target[1:-1].strip())
    if len(urls) > 1:
        raise ld.BadRequestData("Link: more than one JSON-LD @context", parameter="Link")
    return urls


def check_tenant(request: Request) -> None:
    """One tenant here: an ``NGSILD-Tenant`` header is refused, never ignored."""
    if "ngsild-tenant" in request.headers:
        raise ld.NoMultiTenantSupport("NGSILD-Tenant: this interface has one (default) tenant",
                                      parameter="NGSILD-Tenant", location="header")


async def _request_context(request: Request) -> ld.Context:
    check_tenant(request)
    return ld.Context.choose(link_contexts(request.headers.get("link")), _context_url(request))


ContextDep = Annotated[ld.Context, Depends(_request_context)]


def respond(
    request: Request, body: Any, media: str, *, status: int = 200,
    headers: dict[str, str] | None = None, context_url: str | None = None,
) -> Response:
    context = context_url or _context_url(request)
    out_headers = dict(headers or {})
    if media == ld.LD_JSON:
        if isinstance(body, list):
            body = [{**item, "@context": context} for item in body]
        else:
            body = {**body, "@context": context}
    else:
        link = f'<{context}>; rel="{ld.LINK_REL}"; type="{ld.LD_JSON}"'
        out_headers["Link"] = f"{link}, {out_headers['Link']}" if "Link" in out_headers else link
    return Response(_encoder.encode(body), status_code=status, media_type=media,
                    headers=out_headers)


def check_params(request: Request, allowed: frozenset[str]) -> None:
    for name in request.query_params:
        if name in allowed:
            continue
        if name in _UNSUPPORTED:
            raise ld.OperationNotSupported(f"parameter {name!r} is not supported here",
                                           parameter=name)
        raise ld.BadRequestData(f"unknown parameter {name[:100]!r}", parameter=name)


def simplified(options: str | None, fmt: str | None = None) -> bool:
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
    wants = any(o in ("keyValues", "simplified") for o in given)
    if wants and "normalized" in given:
        raise ld.BadRequestData("options cannot be both keyValues and normalized",
                                parameter="options")
    return wants


def wanted_attrs(attrs: str | None, context: ld.Context | None = None) -> frozenset[str] | None:
    if attrs is None:
        return None
    parts = attrs.split(",")
    if len(parts) > MAX_TERMS:
        raise ld.TooComplexQuery(f"attrs: at most {MAX_TERMS} names", parameter="attrs")
    out = frozenset(ld.names(parts, context))
    if not out:
        raise ld.BadRequestData("attrs is empty", parameter="attrs")
    return out


def entity_location(services: Services, latest: Latest) -> Location | None:
    gateway = services.inventory.gateways.get(latest.gateway)
    if gateway is None:
        return None
    device = gateway.devices.get(latest.device)
    if device is not None and device.location is not None:
        return device.location
    return gateway.location


def all_series(services: Services, types: list[str] | None) -> Iterator[Latest]:
    live = services.live
    if types is not None:
        for type_ in dict.fromkeys(types):
            yield from live.by_measurement.get(type_, {}).values()
        return
    for series in live.by_device.values():
        yield from series.values()


def lookup(services: Services, text: str) -> Latest | None:
    for ref in ld.parse_entity_id(text):
        series = services.live.by_device.get((ref.gateway, ref.device))
        if series is None:
            continue
        latest = series.get(series_key(ref.type, dict(ref.tags)))
        if latest is not None:
            return latest
    return None


def has_attrs(services: Services, latest: Latest, attrs: frozenset[str]) -> bool:
    if "location" in attrs and ld.has_location(latest, entity_location(services, latest)):
        return True
    return not attrs.isdisjoint(ld.attribute_values(latest))


URI: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s<>\"{}|\\^`]+")
_RE2_OPTIONS: Final = re2.Options()
_RE2_OPTIONS.max_mem = 1 << 20  # a pattern whose program needs more is refused
_RE2_OPTIONS.log_errors = False


class IdPattern(Protocol):
    def search(self, text: str) -> object | None: ...


def id_pattern(pattern: str | None) -> IdPattern | None:
    """``idPattern`` compiled with RE2: matching is linear in the id's length whatever the
    pattern (no backtracking), so no pattern can hold the event loop. RE2 refuses what it
    cannot match in linear time (backreferences, lookaround): 400 ``BadRequestData``."""
    if pattern is None:
        return None
    if len(pattern) > 256:
        raise ld.BadRequestData("idPattern: at most 256 characters", parameter="idPattern")
    try:
        compiled: IdPattern = re2.compile(pattern, options=_RE2_OPTIONS)
    except re2.error as exc:
        raise ld.BadRequestData(
            f"idPattern is not a regular expression RE2 accepts (RE2 syntax: no "
            f"backreferences or lookaround): {exc}", parameter="idPattern") from exc
    return compiled


fallback = APIRouter(prefix="/ngsi-ld/v1", include_in_schema=False)
_WRITES: Final = ("POST", "PUT", "PATCH", "DELETE")


@fallback.api_route("/{rest:path}", methods=["GET", "HEAD", *_WRITES])
async def _unknown(request: Request, rest: str) -> Response:
    """Everything the interface does not serve: 404 for reads, 405 for writes (this is a
    read-only context source), both NGSI-LD ProblemDetails."""
    if rest.rstrip("/") == "entityOperations/query":
        raise ld.OperationNotSupported("entityOperations/query is POST only", status=405,
                                       headers={"Allow": "POST"})
    if request.method in _WRITES:
        raise ld.OperationNotSupported(
            f"{request.method} is not supported: this NGSI-LD interface is read-only",
            status=405, headers={"Allow": "GET"})
    raise ld.ResourceNotFound(f"no NGSI-LD resource at /ngsi-ld/v1/{rest[:200]}")
