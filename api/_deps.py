"""FastAPI dependencies as ``Annotated`` aliases: services, the caller, role checks.

::

    async def handler(services: ServicesDep, caller: Viewer) -> ...
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable
from typing import Annotated, Any, cast

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import BaseRoute

from api._auth import Principal, Role
from api._errors import Forbidden, RateLimited, Unauthorized
from api._services import Services

__all__ = [
    "Admin",
    "Caller",
    "Engineer",
    "Operator",
    "ServicesDep",
    "Viewer",
    "authenticate_key",
    "authorize",
    "document_security",
    "presented_key",
]

async def get_services(request: Request) -> Services:
    # async: a plain def dependency would cost a thread-pool hop on every request.
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def authenticate_key(services: Services, key: str | None, client: str) -> Principal:
    """Verify a presented key and spend one token of its rate budget."""
    if key is None:
        _failed(services, client, "missing")
        raise Unauthorized(
            "send an API key as X-API-Key or Authorization: Bearer", parameter="X-API-Key",
            location="header", headers={"WWW-Authenticate": "Bearer"},
        )
    known, principal = services.keys.cached(key)
    if not known:
        # Out of failure budget: refused before any database work, unless the key verified
        # before (then the lookup only re-checks it for revocation).
        wait = services.auth_failures.peek(client)
        if wait and not services.keys.known_valid(key):
            services.metrics.auth_failures.labels("limited").inc()
            raise _too_many_failures(wait)
        principal = await services.keys.verify(key)
    if principal is None:
        _failed(services, client, "invalid")
        raise Unauthorized(
            "unknown or revoked API key", parameter="X-API-Key", location="header",
            headers={"WWW-Authenticate": "Bearer"},
        )
    wait = services.limiter.take(principal.key_id)
    if wait:
        raise RateLimited(
            f"rate limit of {services.settings.rate_limit_per_s:g} requests/s exceeded",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
    return principal


def _failed(services: Services, client: str, reason: str) -> None:
    services.metrics.auth_failures.labels(reason).inc()
    wait = services.auth_failures.take(client)
    if wait:
        raise _too_many_failures(wait)


def _too_many_failures(wait: float) -> RateLimited:
    return RateLimited(
        "too many failed authentications from this address",
        headers={"Retry-After": str(max(1, math.ceil(wait)))},
    )




def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """``X-API-Key``, else the ``Authorization: Bearer`` token, from an ASGI scope's raw
    headers (the first of each name, as Starlette's ``Headers.get`` reads them)."""
    api_key = authorization = None
    for name, value in headers:
        if name == b"x-api-key":
            if api_key is None:
                api_key = value
        elif name == b"authorization" and authorization is None:
            authorization = value
    if api_key:
        return api_key.decode("latin-1")
    if authorization is None:
        return None
    scheme, _, token = authorization.decode("latin-1").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


async def authorize(services: Services, key: str | None, client: str, role: Role) -> Principal:
    """:func:`authenticate_key`, then the role check (403 below ``role``): what every route
    needing a key runs, FastAPI's (``Viewer``, ``Admin``...) and the fast lane's."""
    return _role_check(await authenticate_key(services, key, client), role)


def _role_check(caller: Principal, role: Role) -> Principal:
    if caller.role < role:
        raise Forbidden(f"needs role {role.name} or higher; this key is {caller.role.name}")
    return caller


def _require(role: Role) -> Callable[[Request], Awaitable[Principal]]:
    # One dependency per request for the caller (FastAPI solves each sub-dependency with
    # generic machinery: measured 0.35 ms per request for the five the chain had before).
    # The security schemes stay declared in OpenAPI (``document_security``).
    async def check(request: Request) -> Principal:
        services: Services = request.app.state.services
        client = request.client.host if request.client else "unknown"
        caller = await authenticate_key(services, presented_key(request.scope["headers"]), client)
        # Named on the request, so the audit trail can say who was refused (api._audit).
        request.scope.setdefault("state", {})["caller"] = caller
        return _role_check(caller, role)

    check.required_role = role  # type: ignore[attr-defined]
    return check


#: OpenAPI security schemes of every route that needs a key (``document_security``).
SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    "APIKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                     "description": "API key (sck_...), see docs/api.md"},
    "HTTPBearer": {"type": "http", "scheme": "bearer",
                   "description": "The same API key as a bearer token"},
}


def required_role(dependant: Dependant) -> Role | None:
    """The role a route's dependencies require (``None``: public)."""
    for dep in dependant.dependencies:
        role = getattr(dep.call, "required_role", None)
        if isinstance(role, Role):
            return role
        found = required_role(dep)
        if found is not None:
            return found
    return None


def document_security(schema: dict[str, Any], routes: Iterable[BaseRoute]) -> None:
    """Declare the API-key schemes on every operation whose route requires a role, as
    FastAPI does for ``Security`` dependencies (which the role check no longer uses)."""
    paths = schema.get("paths", {})
    needed = False
    # Routes of included routers are reached through their contexts (prefix applied).
    for context in iter_route_contexts(list(routes)):
        if not isinstance(context.original_route, APIRoute):
            continue
        route = cast(APIRoute, context)
        if required_role(route.dependant) is None:
            continue
        for method in route.methods or ():
            operation = paths.get(route.path_format, {}).get(method.lower())
            if operation is not None:
                operation["security"] = [{name: []} for name in SECURITY_SCHEMES]
                needed = True
    if needed:
        components = schema.setdefault("components", {})
        components.setdefault("securitySchemes", {}).update(SECURITY_SCHEMES)


Viewer = Annotated[Principal, Depends(_require(Role.viewer))]
#: Any valid key (every role is at least a viewer).
Caller = Viewer
Operator = Annotated[Principal, Depends(_require(Role.operator))]
Engineer = Annotated[Principal, Depends(_require(Role.engineer))]
Admin = Annotated[Principal, Depends(_require(Role.admin))]
