"""Reusable, strictly validated parameters (patterns from the wire contract)."""

from __future__ import annotations

from typing import Annotated, Final

from fastapi import Path, Query

__all__ = [
    "AREA_PATTERN",
    "ID_PATTERN",
    "NAME_PATTERN",
    "AreaQuery",
    "DeviceQuery",
    "GatewayPath",
    "GatewayQuery",
    "Limit",
    "Offset",
]

#: Gateway and device ids (telemetry.ID_RE), measurement and field names (telemetry.NAME_RE).
ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
NAME_PATTERN: Final = r"^[A-Za-z][A-Za-z0-9_]{0,63}$"
#: Areas are free-form labels in births; queries accept a conservative subset.
AREA_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9 ._:-]{0,63}$"

GatewayPath = Annotated[str, Path(pattern=ID_PATTERN, description="Gateway id")]
DevicePath = Annotated[str, Path(pattern=ID_PATTERN, description="Device id")]
GatewayQuery = Annotated[
    str | None, Query(pattern=ID_PATTERN, description="Only this gateway")
]
DeviceQuery = Annotated[str | None, Query(pattern=ID_PATTERN, description="Only this device")]
AreaQuery = Annotated[str | None, Query(pattern=AREA_PATTERN, description="Only this area")]
Offset = Annotated[int, Query(ge=0, le=10_000_000, description="Items to skip")]
Limit = Annotated[int, Query(ge=1, le=1000, description="Items per page")]
