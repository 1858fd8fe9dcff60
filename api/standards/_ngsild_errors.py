"""NGSI-LD ProblemDetails (ETSI GS CIM 009 clause 5.5.2): the error types of the interface.

::

    NgsiLdError (api.ProblemError)
    ├── BadRequestData          400  a parameter value is malformed
    ├── InvalidRequest          400  the request is incompatible with the operation
    │   └── NotAcceptable       406  Accept names no media type served here
    ├── ResourceNotFound        404  no such entity, type or attribute
    ├── OperationNotSupported   422  valid NGSI-LD that this read-only subset does not do
    │                           (405 for writes, with ``Allow``)
    ├── TooComplexQuery         403  a query past the cost cap (terms, ids, body size)
    ├── LdContextNotAvailable   503  a @context this server does not use (it fetches none)
    └── NoMultiTenantSupport    501  an ``NGSILD-Tenant`` header (one tenant here)

:func:`etsi_problem` gives the errors raised by other layers (routing, authentication, rate
limits) an ETSI type too; ``api._app`` installs it for ``/ngsi-ld/``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Final

from api._errors import ProblemError

__all__ = [
    "ERRORS",
    "BadRequestData",
    "InvalidRequest",
    "LdContextNotAvailable",
    "NgsiLdError",
    "NoMultiTenantSupport",
    "NotAcceptable",
    "OperationNotSupported",
    "ResourceNotFound",
    "TooComplexQuery",
    "etsi_problem",
]

ERRORS: Final = "https://uri.etsi.org/ngsi-ld/errors/"



class NgsiLdError(ProblemError):
    """An NGSI-LD ProblemDetails answer (clause 5.5.2 error types): the platform's problem
    document (:func:`api._errors.problem_body`) with an NGSI-LD ``type`` and no ``errors``."""

    error_type: ClassVar[str] = "InternalError"

    @property
    def type_uri(self) -> str:
        return ERRORS + self.error_type

    def problem_errors(self) -> list[dict[str, Any]] | None:
        return None


class BadRequestData(NgsiLdError):
    status = 400
    error_type = "BadRequestData"
    title = "Bad request data"


class InvalidRequest(NgsiLdError):
    status = 400
    error_type = "InvalidRequest"
    title = "Invalid request"


class NotAcceptable(InvalidRequest):
    status = 406
    title = "Not acceptable"


class ResourceNotFound(NgsiLdError):
    status = 404
    error_type = "ResourceNotFound"
    title = "Resource not found"


class OperationNotSupported(NgsiLdError):
    status = 422
    error_type = "OperationNotSupported"
    title = "Operation not supported"


class TooComplexQuery(NgsiLdError):
    status = 403
    error_type = "TooComplexQuery"
    title = "Query too complex"


class LdContextNotAvailable(NgsiLdError):
    status = 503
    error_type = "LdContextNotAvailable"
    title = "@context not available"


class NoMultiTenantSupport(NgsiLdError):
    status = 501
    error_type = "NoMultiTenantSupport"
    title = "No multi-tenant support"


#: HTTP status -> NGSI-LD error type, for problems raised outside :class:`NgsiLdError`.
#: ETSI defines no type for authentication or rate limits: those keep their HTTP status
#: (401, 403, 429) with ``InvalidRequest``.
_ETSI_BY_STATUS: Final[Mapping[int, str]] = {
    400: "BadRequestData", 401: "InvalidRequest", 403: "InvalidRequest",
    404: "ResourceNotFound", 405: "OperationNotSupported", 406: "InvalidRequest",
    409: "AlreadyExists", 411: "InvalidRequest", 413: "BadRequestData",
    415: "InvalidRequest", 422: "OperationNotSupported", 429: "InvalidRequest",
}


def etsi_problem(body: dict[str, Any]) -> dict[str, Any]:
    """A platform problem document as NGSI-LD ProblemDetails: its ``type`` becomes an
    ETSI error type chosen by status (5xx: ``InternalError``); ETSI types are kept."""
    if str(body.get("type", "")).startswith(ERRORS):
        return body
    status = int(body.get("status", 500))
    error = _ETSI_BY_STATUS.get(status, "InternalError" if status >= 500 else "InvalidRequest")
    return {**body, "type": ERRORS + error}
