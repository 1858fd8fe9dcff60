"""Responses encoded with msgspec, documented in the OpenAPI schema from the same types.

Hot endpoints (latest readings, lists of thousands of vehicles) skip pydantic serialisation:
handlers return :func:`json_response` of a msgspec Struct, and the route declares
``responses=doc(TheStruct)`` so the OpenAPI document still describes the body. The Structs'
JSON schemas are merged into ``components/schemas`` by :func:`components`.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
from starlette.responses import Response

from api._errors import PROBLEM_MEDIA, PROBLEM_SCHEMA

__all__ = ["components", "doc", "json_response"]

_REF: Final = "#/components/schemas/{name}"
_REGISTRY: list[Any] = []
_encoder: Final = msgspec.json.Encoder()


def doc(type_: Any, description: str = "OK", status: int = 200) -> dict[int | str, Any]:
    """``responses=`` entry documenting a msgspec-encoded body plus the common problems."""
    if type_ not in _REGISTRY:
        _REGISTRY.append(type_)
    (schema,), _ = msgspec.json.schema_components([type_], ref_template=_REF)
    problem = {PROBLEM_MEDIA: {"schema": PROBLEM_SCHEMA}}
    return {
        status: {"description": description, "content": {"application/json": {"schema": schema}}},
        400: {"description": "Invalid parameter", "content": problem},
        401: {"description": "No valid API key", "content": problem},
        403: {"description": "Role not allowed", "content": problem},
        429: {"description": "Rate limited", "content": problem},
    }


def components() -> dict[str, Any]:
    if not _REGISTRY:
        return {}
    _, defs = msgspec.json.schema_components(_REGISTRY, ref_template=_REF)
    return defs


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        _encoder.encode(obj), status_code=status, media_type="application/json", headers=headers
    )
