"""Errors of the API package, and their RFC 9457 problem+json form.

::

    ApiError                      base of everything the package raises
    ├── ProblemError              an HTTP problem answered to the client (status, title,
    │   │                         detail, the offending ``parameter``)
    │   ├── BadParameter          400  a parameter broke its rule (pattern, range, limit)
    │   ├── Unauthorized          401  no key, or a key that is unknown or revoked
    │   ├── Forbidden             403  a valid key whose role is too low
    │   ├── NotFound              404  no such gateway, device, alert, rule or key
    │   ├── RateLimited           429  the key (or address) spent its request budget
    │   └── UpstreamUnavailable   502/503  InfluxDB or the broker failed or timed out
    └── ConfigError               invalid settings, refused at start-up

Problems are rendered as ``application/problem+json`` by :func:`problem_body`, the one
renderer of the package: REST errors, request validation, HTTP errors, unhandled errors and
the NGSI-LD ProblemDetails (``api.standards``, which change only ``type``) all go through it::

    {"type": "urn:smartcity:problem:invalid-parameter", "title": "Invalid parameter",
     "status": 400, "detail": "window must match ...", "instance": "/v1/history",
     "parameter": "window", "errors": [{"parameter": "window", "in": "query", ...}]}

:func:`add_problem_handlers` installs the exception handlers that answer with it. A
*dialect* (a function of the body) rewrites the problems answered under a path prefix:
``/ngsi-ld/`` answers every error, whichever layer raised it (routing, authentication,
validation, rate limits), as NGSI-LD ProblemDetails with an ETSI ``type``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

__all__ = [
    "PROBLEM_MEDIA",
    "PROBLEM_SCHEMA",
    "ApiError",
    "BadParameter",
    "ConfigError",
    "Forbidden",
    "NotFound",
    "ProblemDialect",
    "ProblemError",
    "RateLimited",
    "Unauthorized",
    "UpstreamUnavailable",
    "add_problem_handlers",
    "problem_body",
    "problem_response",
]

log = logging.getLogger("api")

PROBLEM_MEDIA: Final = "application/problem+json"
#: The problem+json body, for ``responses=`` of error statuses in the OpenAPI document.
PROBLEM_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "parameter": {"type": "string"},
    },
    "required": ["type", "title", "status"],
}
_URN: Final = "urn:smartcity:problem:"
#: Rewrites a problem body for the paths of one interface (e.g. NGSI-LD error types).
ProblemDialect = Callable[[dict[str, Any]], dict[str, Any]]


def problem_body(
    *,
    type: str,
    title: str,
    status: int,
    detail: str,
    instance: str,
    parameter: str | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The RFC 9457 problem document; ``parameter`` and ``errors`` only when given."""
    body: dict[str, Any] = {
        "type": type, "title": title, "status": status, "detail": detail, "instance": instance,
    }
    if parameter is not None:
        body["parameter"] = parameter
    if errors:
        body["errors"] = errors
    return body


def problem_response(body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(body, status_code=body["status"], media_type=PROBLEM_MEDIA,
                        headers=headers or None)


class ApiError(Exception):
    """Base of every error the API package raises."""


class ConfigError(ApiError):
    """Settings that cannot work; raised before anything starts."""


class ProblemError(ApiError):
    """An error answered to the client as an RFC 9457 problem document."""

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal error"

    def __init__(
        self,
        detail: str,
        *,
        parameter: str | None = None,
        location: str | None = None,
        headers: dict[str, str] | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.parameter = parameter
        self.location = location
        self.headers = headers or {}
        self.status_code = status or self.status

    @property
    def type_uri(self) -> str:
        """The problem's ``type``."""
        return _URN + self.slug

    def problem_errors(self) -> list[dict[str, Any]] | None:
        """The ``errors`` member: the offending parameter, where it was and why."""
        if self.parameter is None:
            return None
        return [{"parameter": self.parameter, "in": self.location or "query",
                 "detail": self.detail}]

    def to_problem(self, instance: str) -> dict[str, Any]:
        return problem_body(
            type=self.type_uri, title=self.title, status=self.status_code, detail=self.detail,
            instance=instance, parameter=self.parameter, errors=self.problem_errors(),
        )


class BadParameter(ProblemError):
    status = 400
    slug = "invalid-parameter"
    title = "Invalid parameter"


class Unauthorized(ProblemError):
    status = 401
    slug = "unauthorized"
    title = "Authentication required"


class Forbidden(ProblemError):
    status = 403
    slug = "forbidden"
    title = "Role not allowed"


class NotFound(ProblemError):
    status = 404
    slug = "not-found"
    title = "Not found"


class RateLimited(ProblemError):
    status = 429
    slug = "rate-limited"
    title = "Too many requests"


class UpstreamUnavailable(ProblemError):
    status = 503
    slug = "upstream-unavailable"
    title = "Upstream service unavailable"


# -- exception handlers: every error leaves as problem+json -----------------------------------

_TITLES: Final = {
    400: "Invalid parameter", 401: "Authentication required", 403: "Role not allowed",
    404: "Not found", 405: "Method not allowed", 406: "Not acceptable",
    413: "Payload too large", 415: "Unsupported media type", 429: "Too many requests",
}


def add_problem_handlers(
    app: FastAPI, *, dialects: Mapping[str, ProblemDialect] | None = None
) -> None:
    """Answer every error of ``app`` as problem+json (ours, validation, HTTP, unhandled);
    under a path prefix of ``dialects``, rewritten by that prefix's dialect."""
    prefixes = sorted((dialects or {}).items(), key=lambda item: -len(item[0]))

    def answer(request: Request, body: dict[str, Any],
               headers: dict[str, str] | None = None) -> Response:
        path = request.url.path
        for prefix, dialect in prefixes:
            if path.startswith(prefix):
                body = dialect(body)
                break
        return problem_response(body, headers)

    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ProblemError)
        return answer(request, exc.to_problem(request.url.path), exc.headers)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = []
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ())]
            where = loc[0] if loc else "request"
            name = ".".join(loc[1:]) or where
            errors.append({"parameter": name, "in": where, "detail": str(err.get("msg", ""))})
        first = errors[0] if errors else {"parameter": "request", "detail": "invalid request"}
        return answer(request, problem_body(
            type=_URN + "invalid-parameter", title="Invalid parameter", status=400,
            detail=f"{first['parameter']}: {first['detail']}", instance=request.url.path,
            parameter=first["parameter"], errors=errors,
        ))

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        title = _TITLES.get(exc.status_code, "HTTP error")
        body = problem_body(
            type=_URN + title.lower().replace(" ", "-"), title=title, status=exc.status_code,
            detail=str(exc.detail), instance=request.url.path,
        )
        return answer(request, body, dict(exc.headers) if exc.headers else None)

    async def on_error(request: Request, exc: Exception) -> Response:
        log.error("unhandled error", exc_info=exc, extra={"path": request.url.path})
        return answer(request, problem_body(
            type=_URN + "internal", title="Internal error", status=500,
            detail="the server failed; the error is logged", instance=request.url.path,
        ))

    app.add_exception_handler(ProblemError, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_error)
