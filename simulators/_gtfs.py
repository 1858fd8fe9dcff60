"""Export a scenario's bus timetable as a GTFS Schedule zip (``smartcity sim gtfs``, the demo).

The timetable and the writer are :mod:`simulators._timetable`; this builds the city for it.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import BinaryIO
from zoneinfo import ZoneInfo

from simulators._city import City
from simulators._errors import ScenarioError
from simulators._scenario import Scenario
from simulators._timetable import write_delays, write_gtfs

__all__ = ["export_gtfs"]


def export_gtfs(
    scenario: Scenario,
    target: Path | BinaryIO,
    *,
    start: dt.date | None = None,
    days: int = 365,
    delays: Path | None = None,
    delay_days: int = 2,
) -> dict[str, int]:
    """Write ``scenario``'s timetable to ``target`` as a GTFS zip valid for ``days`` days
    from ``start`` (default: the day before the scenario's start, in the city's zone); return
    the rows of each file. With ``delays``, also write the recorded delay of every trip of
    the first ``delay_days`` days there (CSV, :func:`simulators._timetable.write_delays`).
    Raise :class:`ScenarioError` when the scenario has no buses."""
    if days < 1:
        raise ValueError("days must be at least 1")
    timetable = City(scenario).timetable
    if timetable is None or not timetable.bus_ids:
        raise ScenarioError(f"scenario {scenario.name} has no buses: no timetable",
                            key="gateways")
    if start is None:
        zone = ZoneInfo(scenario.city.timezone)
        when = dt.datetime.fromtimestamp(scenario.start_ns() / 1e9, zone)
        start = when.date() - dt.timedelta(days=1)
    counts = write_gtfs(timetable, target, start=start, end=start + dt.timedelta(days=days - 1))
    if delays is not None:
        counts["delays"] = write_delays(timetable, delays, start=start,
                                        days=min(delay_days, days))
    return counts
