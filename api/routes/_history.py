"""History: one field of one device (or of every device of an area), raw or per window."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.responses import Response

from api._deps import ServicesDep, Viewer
from api._encoding import doc, json_response
from api._params import (
    ID_PATTERN,
    NAME_PATTERN,
    AggregateQuery,
    EndQuery,
    GatewayQuery,
    StartQuery,
    WindowQuery,
    time_range,
)
from api.storage import HistoryOut, read_series

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["history"])


@router.get("/history", response_model=None, responses=doc(HistoryOut),
            summary="One field of one device over time, raw or aggregated per window")
async def history(
    services: ServicesDep,
    _caller: Viewer,
    device: Annotated[str, Query(pattern=ID_PATTERN, description="Device id")],
    measurement: Annotated[str, Query(pattern=NAME_PATTERN, description="Measurement")],
    field: Annotated[str, Query(pattern=NAME_PATTERN, description="Field name")],
    gateway: GatewayQuery = None,
    start: StartQuery = None,
    end: EndQuery = None,
    window: WindowQuery = None,
    aggregate: AggregateQuery = None,
    lane: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9._:-]{1,64}$")] = None,
) -> Response:
    settings = services.settings
    start_ns, end_ns = time_range(start, end, max_days=settings.max_range_days)
    out = await read_series(
        services.influx, max_points=settings.max_points, measurement=measurement, field=field,
        devices=[(gateway, device)], start_ns=start_ns, end_ns=end_ns, window=window,
        aggregate=aggregate, lane=lane,
    )
    return json_response(out)
