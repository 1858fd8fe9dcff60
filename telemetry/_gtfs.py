"""GTFS Schedule times: the service day's anchor and the ``HH:MM:SS`` stop time. Pure.

A GTFS stop time counts from "noon minus 12 h" of its service day in the agency's time
zone (GTFS reference, ``stop_times.txt``): midnight, except on the two days a year when the
clocks change. Times past midnight keep counting (``25:10:00`` is 01:10 the next morning),
so hours run past 24. The simulator writes feeds with these rules and the API reads them.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from typing import Final
from zoneinfo import ZoneInfo

__all__ = ["format_gtfs_time", "parse_gtfs_time", "service_day_anchor"]

_TIME_RE: Final = re.compile(r"^\s*(\d{1,3}):([0-5]\d):([0-5]\d)\s*$")


@functools.lru_cache(maxsize=128)
def service_day_anchor(day: dt.date, tz: ZoneInfo) -> float:
    """Noon minus 12 h of ``day`` in ``tz`` (GTFS times count from it), in seconds since
    the epoch."""
    noon = dt.datetime(day.year, day.month, day.day, 12, tzinfo=tz)
    return noon.timestamp() - 43_200


def parse_gtfs_time(text: str) -> int | None:
    """Seconds after the anchor of a GTFS time ``H:MM:SS`` / ``HHH:MM:SS`` (hours may pass
    24; blanks around it allowed); ``None`` when ``text`` is not one."""
    m = _TIME_RE.match(text)
    if m is None:
        return None
    return int(m[1]) * 3600 + int(m[2]) * 60 + int(m[3])


def format_gtfs_time(seconds: float) -> str:
    """``HH:MM:SS`` of ``seconds`` after the anchor, rounded to the second (hours past 24
    stay as they are)."""
    s = round(seconds)
    return f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"
