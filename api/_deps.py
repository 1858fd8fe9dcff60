"""FastAPI dependencies as ``Annotated`` aliases: services, the caller, role checks.

::

    async def handler(services: ServicesDep, caller: Viewer) -> ...
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

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
]

_api_key = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="API key (sck_...), see docs/api.md"
)
_bearer = HTTPBearer(auto_error=False, description="The same API key as a bearer token")


def get_services(request: Request) -> Services:
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


async def _authenticate(
    request: Request,
    services: ServicesDep,
    api_key: Annotated[str | None, Security(_api_key)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> Principal:
    key = api_key or (bearer.credentials if bearer is not None else None)
    client = request.client.host if request.client else "unknown"
    return await authenticate_key(services, key, client)


Caller = Annotated[Principal, Depends(_authenticate)]


def _require(role: Role) -> Callable[[Principal], Awaitable[Principal]]:
    async def check(caller: Caller) -> Principal:
        if caller.role < role:
            raise Forbidden(f"needs role {role.name} or higher; this key is {caller.role.name}")
        return caller

    return check


Viewer = Annotated[Principal, Depends(_require(Role.viewer))]
Operator = Annotated[Principal, Depends(_require(Role.operator))]
Engineer = Annotated[Principal, Depends(_require(Role.engineer))]
Admin = Annotated[Principal, Depends(_require(Role.admin))]
