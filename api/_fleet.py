"""The fleet view's columns of ``GET /v1/gateways``: version, last update, clock, enrolment,
disk free, links, and the flags ``?status=`` filters on.

::

    gateway's last health ─┬─ version, disk_free_bytes, links, update {version, status, ts}
                           └─ clock_offset_s / clock_delay_s / clock_checked_ts (the last
                              sync-time-check the gateway recorded)
    this API's own checks (services.commands.clocks) ─ newer one wins ─▶ clock
    enrolment state ─ services.db.enrolments() (gateway -> state), when the database has it

    flags: outdated   version below ``fleet_version`` (unset: the newest any gateway reports)
           clock_off  |offset| > ``clock_off_threshold_s``
           disk_low   disk_free_bytes < ``disk_low_bytes``

Everything read from a health message is read defensively (a hostile or older gateway may
send any value of any type, or nothing): a value of the wrong type is shown as ``null``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
from dataclasses import dataclass
from typing import Any, Final, Literal

import msgspec
from sqlalchemy.exc import SQLAlchemyError

from api._params import iso
from api._services import Services
from api.state import GatewayState

__all__ = ["FLAGS", "FleetClock", "FleetContext", "UpdateOut", "fleet_context", "version_key"]

log: Final = logging.getLogger("api.fleet")

Flag = Literal["outdated", "clock_off", "disk_low"]
FLAGS: Final = ("outdated", "clock_off", "disk_low")
_PART: Final = re.compile(r"\d+|[A-Za-z]+")


class UpdateOut(msgspec.Struct, omit_defaults=True):
    """The gateway's last agent update, as its health reports it."""

    version: str | None
    status: str | None
    at: str | None
    reason: str | None = None


class FleetClock(msgspec.Struct):
    """Gateway clock minus the API's, s (error within ± ``delay_s`` / 2)."""

    offset_s: float
    delay_s: float | None
    checked_at: str
    off: bool
    #: ``api``: this API's own check; ``health``: the check the gateway reports.
    source: str


def version_key(version: str) -> tuple[tuple[float, int | str], ...]:
    """An order on version strings without ``packaging`` (not in the server lock): numbers
    numerically, a pre-release tag (``rc1``) before the release, a local part (``+abc``)
    ignored. ``0.1.9 < 0.1.10 < 0.2.0rc1 < 0.2.0 < 0.2.0.1``."""
    parts: list[tuple[float, int | str]] = [
        (1, int(p)) if p.isdigit() else (0, p.lower())
        for p in _PART.findall(version.split("+", 1)[0])
    ]
    parts.append((0.5, ""))
    return tuple(parts)


@dataclass(frozen=True, slots=True)
class FleetContext:
    """What one listing needs once: the version to compare with, the enrolment states."""

    newest: str | None
    enrolments: dict[str, str]


def _str(v: object) -> str | None:
    return v[:200] if isinstance(v, str) else None


def _num(v: object) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def health_version(gw: GatewayState) -> str | None:
    return _str(gw.health.get("version")) if gw.health else None


async def fleet_context(services: Services) -> FleetContext:
    newest = services.settings.fleet_version
    if newest is None:
        versions = [v for gw in services.inventory.gateways.values()
                    if (v := health_version(gw)) and v != "unknown"]
        newest = max(versions, key=version_key, default=None)
    return FleetContext(newest=newest, enrolments=await _enrolments(services))


async def _enrolments(services: Services) -> dict[str, str]:
    """``services.db.enrolments()`` (gateway -> state) when the database has it; else {}."""
    read = getattr(services.db, "enrolments", None)
    if not callable(read):
        return {}
    try:
        if inspect.iscoroutinefunction(read):
            got = await read()
        else:  # a database query: off the event loop
            got = await asyncio.to_thread(read)
    except (SQLAlchemyError, OSError) as exc:
        log.warning("enrolment states not read", extra={"error": str(exc)})
        return {}
    if not isinstance(got, dict):
        return {}
    return {str(k): str(getattr(v, "state", v)) for k, v in got.items()}


def update_of(health: dict[str, Any] | None) -> UpdateOut | None:
    u = health.get("update") if health else None
    if not isinstance(u, dict):
        return None
    ts = _num(u.get("ts"))
    return UpdateOut(
        version=_str(u.get("version")), status=_str(u.get("status")),
        at=iso(int(ts * 1e9)) if ts is not None and 0 < ts < 4e9 else None,
        reason=_str(u.get("reason")),
    )


def clock_of(services: Services, gw: GatewayState) -> FleetClock | None:
    threshold = services.settings.clock_off_threshold_s
    health = gw.health or {}
    offset, checked = _num(health.get("clock_offset_s")), health.get("clock_checked_ts")
    own = services.commands.clocks.get(gw.id)
    if own is not None and not (
        isinstance(checked, int) and not isinstance(checked, bool) and checked > own.checked_ns
    ):
        return FleetClock(own.offset_s, own.delay_s, iso(own.checked_ns),
                          abs(own.offset_s) > threshold, "api")
    if offset is None or not isinstance(checked, int) or isinstance(checked, bool) \
            or not 0 < checked < 2**62:
        return None
    return FleetClock(offset, _num(health.get("clock_delay_s")), iso(checked),
                      abs(offset) > threshold, "health")


def links_of(health: dict[str, Any] | None) -> dict[str, str]:
    links = health.get("links") if health else None
    if not isinstance(links, dict):
        return {}
    return {str(k)[:64]: str(v)[:32] for k, v in list(links.items())[:64]}


def flags_of(
    services: Services, ctx: FleetContext, version: str | None, clock: FleetClock | None,
    disk_free: int | None,
) -> list[str]:
    flags: list[str] = []
    if version is not None and ctx.newest is not None and (
        version_key(version) < version_key(ctx.newest)
    ):
        flags.append("outdated")
    if clock is not None and clock.off:
        flags.append("clock_off")
    if disk_free is not None and disk_free < services.settings.disk_low_bytes:
        flags.append("disk_low")
    return flags


def disk_free_of(health: dict[str, Any] | None) -> int | None:
    v = health.get("disk_free_bytes") if health else None
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None
