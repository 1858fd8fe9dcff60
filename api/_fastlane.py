"""The fast lane: the hottest reads answered before FastAPI's routing and dependency solving.

::

    uvicorn ─▶ ServerErrorMiddleware ─▶ CORS ─▶ metrics ─▶ FastLane ─┬─▶ answered here
                                                                     └─▶ FastAPI's router
                                                                         (everything else)

``GET /v1/live/{gateway}/{device}`` and ``GET /v1/live`` are most of what dashboards and
clients poll. Through FastAPI each costs a walk over every route of the included routers, the
generic dependency solver and a response object; the handler itself is a dictionary lookup
and a msgspec encode. The fast lane matches these two paths first and answers them itself:

- the **same auth**: :func:`api._deps.authorize` with the role the FastAPI route declares
  (read from the route's dependencies, so the two cannot drift apart), i.e. the same key
  check, per-key rate budget, failure limiter and metrics;
- the **same bodies**: :func:`api.routes._inventory.device_latest` / ``live_page``, which the
  FastAPI handlers call too, encoded with the same encoder and the same two headers
  (``content-length``, ``content-type: application/json``);
- the **same errors**: a :class:`ProblemError` is answered by the same renderer as the app's
  exception handler (problem+json, ``instance`` from the request URL, its headers such as
  ``Retry-After`` and ``WWW-Authenticate``); anything else propagates to the app's
  ``ServerErrorMiddleware`` exactly as from a route;
- the **same metrics and headers**: it sits inside the metrics and CORS middlewares and sets
  ``scope["route"]`` to the FastAPI route it stands in for, so requests are counted under the
  same route template.

Whatever it is not sure to answer exactly as FastAPI would, it passes on, *before* spending
anything (no auth, no rate-limit token): other methods, a ``root_path``, a path segment or
query value that does not match its pattern (FastAPI answers the 400, or the 401 first), a
repeated or empty query parameter, an integer outside its range or in an unusual spelling.
The OpenAPI document is built from the FastAPI routes, which stay registered: unchanged.
``fast_lane: false`` in the settings turns it off (every request through FastAPI).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any, Final, cast
from urllib.parse import parse_qsl

import msgspec
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.requests import Request
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from api._auth import Role
from api._deps import authorize, presented_key, required_role
from api._errors import ProblemError, problem_response
from api._params import AREA_PATTERN, ID_PATTERN, NAME_PATTERN
from api._services import Services
from api.routes import _inventory

__all__ = ["FastLane"]

log = logging.getLogger("api")

_ID: Final = re.compile(ID_PATTERN)
_NAME: Final = re.compile(NAME_PATTERN)
_AREA: Final = re.compile(AREA_PATTERN)
#: Integers spelt as pydantic and we both read them the same way (no sign, no padding).
_INT: Final = re.compile(r"0|[1-9][0-9]{0,8}")
_encoder: Final = msgspec.json.Encoder()
_JSON: Final = (b"content-type", b"application/json")
_DEVICE_PREFIX: Final = "/v1/live/"
_LIST_PATH: Final = "/v1/live"
_STRINGS: Final = {"measurement": _NAME, "gateway": _ID, "device": _ID, "area": _AREA}
#: (name, lowest, highest, default) of the list's paging parameters (api._params).
_INTS: Final = (("offset", 0, 10_000_000, 0), ("limit", 1, 1000, 100))


class _Lane:
    """One fast route: the FastAPI route it stands in for and the role that route needs."""

    __slots__ = ("role", "route")

    def __init__(self, route: APIRoute, role: Role) -> None:
        self.route = route
        self.role = role


def _lanes(routes: Iterable[BaseRoute]) -> dict[str, _Lane]:
    """The FastAPI GET routes of the fast paths, by path template."""
    wanted = {"/v1/live/{gateway}/{device}", "/v1/live"}
    found: dict[str, _Lane] = {}
    for context in iter_route_contexts(list(routes)):
        original = context.original_route
        if not isinstance(original, APIRoute):
            continue
        path = context.path_format
        if path in wanted and "GET" in (context.methods or ()) and path not in found:
            role = required_role(cast(APIRoute, context).dependant)
            if role is None:
                continue  # a public route would need no key: not what the lane checks
            found[path] = _Lane(original, role)
    missing = wanted - set(found)
    if missing:
        log.warning("fast lane: routes not found, served by FastAPI",
                    extra={"paths": sorted(missing)})
    return found


class FastLane:
    """ASGI middleware answering the latest-values reads (see the module docstring)."""

    def __init__(self, app: ASGIApp, services: Services, routes: Iterable[BaseRoute]) -> None:
        self.app = app
        self.services = services
        lanes = _lanes(routes)
        self._device = lanes.get("/v1/live/{gateway}/{device}")
        self._list = lanes.get("/v1/live")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope["method"] == "GET"
                and scope["path"].startswith(_LIST_PATH) and not scope.get("root_path")):
            path: str = scope["path"]
            if path.startswith(_DEVICE_PREFIX):
                if self._device is not None and await self._device_latest(
                        scope, receive, send, path):
                    return
            elif path == _LIST_PATH and self._list is not None and await self._live_page(
                    scope, receive, send):
                return
        await self.app(scope, receive, send)

    async def _device_latest(self, scope: Scope, receive: Receive, send: Send,
                             path: str) -> bool:
        gateway, slash, device = path[len(_DEVICE_PREFIX):].partition("/")
        if not slash or not _ID.fullmatch(gateway) or not _ID.fullmatch(device):
            return False  # FastAPI answers: 404 (no route), 400 (pattern) or 401 first
        lane = self._device
        assert lane is not None
        scope["route"] = lane.route
        try:
            await self._authorize(scope, lane.role)
            body = _encoder.encode(_inventory.device_latest(self.services, gateway, device))
        except ProblemError as exc:
            await _problem(exc, scope, receive, send)
            return True
        await _ok(body, send)
        return True

    async def _live_page(self, scope: Scope, receive: Receive, send: Send) -> bool:
        query = _list_query(scope["query_string"])
        if query is None:
            return False
        lane = self._list
        assert lane is not None
        scope["route"] = lane.route
        try:
            await self._authorize(scope, lane.role)
            page = _inventory.live_page(self.services, **query)
        except ProblemError as exc:
            await _problem(exc, scope, receive, send)
            return True
        await _ok(_encoder.encode(page), send)
        return True

    async def _authorize(self, scope: Scope, role: Role) -> None:
        client = scope.get("client")
        await authorize(self.services, presented_key(scope["headers"]),
                        client[0] if client else "unknown", role)


def _list_query(raw: bytes) -> dict[str, Any] | None:
    """``GET /v1/live``'s parameters as its handler takes them, or ``None`` when FastAPI
    should read them (a value it would refuse, or one the lane is not sure to read alike).
    Unknown parameters are ignored, as FastAPI ignores them."""
    values: dict[str, Any] = {"measurement": None, "gateway": None, "device": None,
                              "area": None, "offset": 0, "limit": 100}
    if not raw:
        return values
    seen: set[str] = set()
    for name, value in parse_qsl(raw.decode("latin-1"), keep_blank_values=True):
        if name in seen:
            return None
        pattern = _STRINGS.get(name)
        if pattern is not None:
            if not pattern.fullmatch(value):
                return None
            values[name] = value
            seen.add(name)
        elif name == "offset" or name == "limit":
            if not _INT.fullmatch(value):
                return None
            values[name] = int(value)
            seen.add(name)
    for name, lowest, highest, _default in _INTS:
        if not lowest <= values[name] <= highest:
            return None
    return values


async def _ok(body: bytes, send: Send) -> None:
    # The headers json_response's Response builds, in its order.
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode()), _JSON]})
    await send({"type": "http.response.body", "body": body})


async def _problem(exc: ProblemError, scope: Scope, receive: Receive, send: Send) -> None:
    # What the app's ProblemError handler answers (api._errors.add_problem_handlers); the
    # fast paths are under /v1/, where no problem dialect applies.
    response = problem_response(exc.to_problem(Request(scope).url.path), exc.headers)
    await response(scope, receive, send)
