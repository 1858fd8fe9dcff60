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

Problems are rendered as ``application/problem+json``::

    {"type": "urn:smartcity:problem:invalid-parameter", "title": "Invalid parameter",
     "status": 400, "detail": "window must match ...", "parameter": "window",
     "instance": "/v1/history"}
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "ApiError",
    "BadParameter",
    "ConfigError",
    "Forbidden",
    "NotFound",
    "ProblemError",
    "RateLimited",
    "Unauthorized",
    "UpstreamUnavailable",
]


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

    def to_problem(self, instance: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": f"urn:smartcity:problem:{self.slug}",
            "title": self.title,
            "status": self.status_code,
            "detail": self.detail,
            "instance": instance,
        }
        if self.parameter is not None:
            body["parameter"] = self.parameter
            body["errors"] = [
                {"parameter": self.parameter, "in": self.location or "query",
                 "detail": self.detail}
            ]
        return body


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
