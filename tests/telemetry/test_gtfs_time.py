"""GTFS Schedule times (telemetry/_gtfs.py): what the simulator writes, the API reads."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from telemetry import format_gtfs_time, parse_gtfs_time, service_day_anchor


@given(st.integers(min_value=0, max_value=999 * 3600 + 3599))
def test_format_then_parse_gives_the_seconds_back(seconds: int) -> None:
    assert parse_gtfs_time(format_gtfs_time(seconds)) == seconds


def test_times_past_midnight_and_padding() -> None:
    assert format_gtfs_time(25 * 3600 + 10 * 60 + 0.4) == "25:10:00"
    assert parse_gtfs_time(" 7:05:09 ") == 7 * 3600 + 5 * 60 + 9
    for bad in ("", "7:5:09", "07:60:00", "1000:00:00", "07:00", "seven"):
        assert parse_gtfs_time(bad) is None


def test_the_anchor_is_noon_minus_12_hours_also_when_clocks_change() -> None:
    tz = ZoneInfo("Europe/Berlin")
    plain = dt.date(2024, 6, 1)
    assert service_day_anchor(plain, tz) == dt.datetime(2024, 6, 1, tzinfo=tz).timestamp()
    # 31 March 2024: clocks go forward at 02:00, so noon - 12 h is 23:00 the evening before.
    spring = dt.date(2024, 3, 31)
    midnight = dt.datetime(2024, 3, 31, tzinfo=tz).timestamp()
    assert service_day_anchor(spring, tz) == midnight - 3600
