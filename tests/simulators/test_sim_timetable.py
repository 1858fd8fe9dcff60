"""The simulated buses' timetable: the GTFS feed is what an on-time bus does, the recorded
delays are what the buses then do, and nothing jumps."""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import sim_helpers as h

from simulators import City, load_scenario
from simulators._timetable import GTFS_FILES, Timetable, write_gtfs

DAY = dt.date(2024, 11, 27)
M_PER_DEG = 111_320.0


def _city(**timetable: object) -> City:
    sc = h.scenario(city={
        "grid": {"rows": 6, "cols": 6, "spacing_m": 350, "arterial_every": 2},
        "bus_routes": 2, "timetable": timetable,
    })  # fmt: skip
    return City(sc)


def _metres(a: tuple[float, float], b: tuple[float, float]) -> float:
    dy = (a[0] - b[0]) * M_PER_DEG
    dx = (a[1] - b[1]) * M_PER_DEG * math.cos(math.radians(a[0]))
    return math.hypot(dx, dy)


def _tables(data: bytes) -> dict[str, list[dict[str, str]]]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {n: list(csv.DictReader(io.StringIO(zf.read(n).decode()))) for n in zf.namelist()}


def _gtfs(timetable: Timetable) -> dict[str, list[dict[str, str]]]:
    buf = io.BytesIO()
    write_gtfs(timetable, buf, start=DAY, end=DAY + dt.timedelta(days=30))
    return _tables(buf.getvalue())


def _seconds(hms: str) -> int:
    hh, mm, ss = (int(x) for x in hms.split(":"))
    return hh * 3600 + mm * 60 + ss


def _position(city: City, bus: int, t_s: float) -> tuple[float, float]:
    """Where the city puts ``bus`` at ``t_s`` (a fresh city stepped once: positions are a
    pure function of time)."""
    fresh = City(city.scenario, city.layout)
    frame = fresh.step(round(t_s * 1e9), frozenset({"bus"}))
    values = frame.kinds["bus"].values
    return float(values["latitude"][bus]), float(values["longitude"][bus])


def test_the_feed_holds_the_standard_files_and_columns() -> None:
    city = _city()
    assert city.timetable is not None
    tables = _gtfs(city.timetable)
    assert set(tables) == set(GTFS_FILES)
    assert tables["agency.txt"][0]["agency_timezone"] == "Europe/Oslo"
    buses = city.layout.kinds["bus"].device_ids
    assert {t["block_id"] for t in tables["trips.txt"]} == set(buses)
    trips = {t["trip_id"] for t in tables["trips.txt"]}
    assert len(trips) == len(tables["trips.txt"])  # unique ids
    assert {s["trip_id"] for s in tables["stop_times.txt"]} == trips
    for row in tables["stop_times.txt"][:200]:
        assert _seconds(row["arrival_time"]) <= _seconds(row["departure_time"])
    # Service all day: each bus's trips start every H seconds from 00:00 to 24:00.
    first = {t["trip_id"]: t for t in tables["stop_times.txt"] if t["stop_sequence"] == "1"}
    starts = sorted(_seconds(first[t["trip_id"]]["departure_time"])
                    for t in tables["trips.txt"] if t["block_id"] == buses[0])
    gaps = set(np.diff(starts).tolist())
    assert len(gaps) == 1
    assert starts[0] < gaps.pop()
    assert starts[-1] < 86_400


def test_an_on_time_bus_is_at_each_stop_at_its_timetabled_time() -> None:
    city = _city(max_delay_s=0)  # no delays: the buses run the timetable exactly
    timetable = city.timetable
    assert timetable is not None
    tables = _gtfs(timetable)
    stops = {s["stop_id"]: (float(s["stop_lat"]), float(s["stop_lon"]))
             for s in tables["stops.txt"]}
    by_trip: dict[str, list[dict[str, str]]] = {}
    for row in tables["stop_times.txt"]:
        by_trip.setdefault(row["trip_id"], []).append(row)
    anchor = timetable.anchor(DAY)
    checked = 0
    for trip in tables["trips.txt"][::37]:
        bus = city.layout.kinds["bus"].device_ids.index(trip["block_id"])
        for row in by_trip[trip["trip_id"]]:
            for column in ("arrival_time", "departure_time"):
                t = anchor + _seconds(row[column])
                assert _metres(_position(city, bus, t), stops[row["stop_id"]]) < 1.0
                checked += 1
        state = timetable.state(bus, anchor + _seconds(by_trip[trip["trip_id"]][1]
                                                       ["arrival_time"]))
        assert state.trip.trip_id == trip["trip_id"]
        assert state.delay_s == 0
    assert checked > 50


def test_a_late_trip_is_exactly_its_recorded_delay_behind_the_timetable() -> None:
    city = _city(disrupted_share=0.5)
    timetable = city.timetable
    assert timetable is not None
    tables = _gtfs(timetable)
    stops = {s["stop_id"]: (float(s["stop_lat"]), float(s["stop_lon"]))
             for s in tables["stops.txt"]}
    times = [r for r in tables["stop_times.txt"] if r["stop_sequence"] == "3"]
    anchor = timetable.anchor(DAY)
    delays = []
    for row in times[::11]:
        trip_id = row["trip_id"]
        block = next(t["block_id"] for t in tables["trips.txt"] if t["trip_id"] == trip_id)
        bus = city.layout.kinds["bus"].device_ids.index(block)
        index = int(trip_id.rsplit("-", 1)[1])
        delay = timetable.delay_s(bus, DAY, index)
        delays.append(delay)
        t = anchor + _seconds(row["arrival_time"]) + delay
        assert _metres(_position(city, bus, t), stops[row["stop_id"]]) < 1.0
        state = timetable.state(bus, t)
        assert (state.trip.trip_id, state.delay_s, state.phase) == (trip_id, delay, "dwell")
    assert max(delays) > 240  # some trips are badly late
    assert min(delays) < 60


def test_buses_never_jump_and_trips_follow_each_other() -> None:
    city = _city(disrupted_share=0.3)
    timetable = city.timetable
    assert timetable is not None
    step_s = 20
    max_step_m = timetable.spec.speed_kmh / 3.6 * 1.05 * step_s + 1.0  # run times: whole s
    start = timetable.anchor(DAY) + 22 * 3600  # across midnight into the next service day
    last_pos: list[tuple[float, float]] | None = None
    trips: list[list[str]] = [[] for _ in timetable.bus_ids]
    for k in range(4 * 3600 // step_s):
        frame = city.step(round((start + k * step_s) * 1e9), frozenset({"bus"}))
        bus = frame.kinds["bus"]
        pos = list(zip(bus.values["latitude"].tolist(), bus.values["longitude"].tolist(),
                       strict=True))
        if last_pos is not None:
            for a, b in zip(last_pos, pos, strict=True):
                assert _metres(a, b) <= max_step_m
        last_pos = pos
        for b, trip_id in enumerate(bus.strings["tripId"]):
            if not trips[b] or trips[b][-1] != trip_id:
                trips[b].append(trip_id)
        assert [s.trip.trip_id for s in city.bus_states] == bus.strings["tripId"]
    for seq in trips:
        # One trip after the other: the index goes up by one, and back to 0 after midnight.
        indices = [int(t.rsplit("-", 1)[1]) for t in seq]
        steps = set(np.diff(indices).tolist())
        assert steps <= {1} | {-(max(indices))}, seq
        assert 0 in indices


def test_delays_are_a_pure_function_of_bus_day_and_trip() -> None:
    a, b = _city(), _city()
    assert a.timetable is not None
    assert b.timetable is not None
    b.step(round(a.timetable.anchor(DAY) * 1e9))
    for bus in range(len(a.timetable.bus_ids)):
        assert np.array_equal(a.timetable.delays(bus, DAY), b.timetable.delays(bus, DAY))
        d = a.timetable.delays(bus, DAY)
        assert d.min() >= 0
        assert d.max() <= a.timetable.spec.max_delay_s


def test_sim_gtfs_command_writes_the_feed(tmp_path: Path) -> None:
    out = tmp_path / "gtfs.zip"
    proc = subprocess.run(
        [sys.executable, "-m", "smartcity", "sim", "gtfs", "--scenario", "small",
         "--out", str(out), "--start", "2024-11-27", "--days", "7",
         "--delays", str(tmp_path / "delays.csv"), "--delay-days", "1"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    tables = _tables(out.read_bytes())
    assert tables["calendar.txt"][0]["start_date"] == "20241127"
    assert tables["calendar.txt"][0]["end_date"] == "20241203"
    # The ground truth beside it: every trip of the day with its recorded delay.
    with (tmp_path / "delays.csv").open() as fh:
        truth = list(csv.DictReader(fh))
    assert len(truth) == len(tables["trips.txt"])
    timetable = City(load_scenario("small")).timetable
    assert timetable is not None
    for row in truth[::50]:
        bus = timetable.bus_ids.index(row["block_id"])
        index = int(row["trip_id"].rsplit("-", 1)[1])
        assert int(row["delay_s"]) == timetable.delay_s(bus, DAY, index)
    bad = subprocess.run(
        [sys.executable, "-m", "smartcity", "sim", "gtfs", "--scenario", "small",
         "--out", str(out), "--start", "2024-13-01"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert bad.returncode == 2
    assert "--start" in bad.stderr


@pytest.mark.parametrize("least", [60.0, 1000.0, 1921.0, 86_000.0])
def test_the_cycle_divides_the_day(least: float) -> None:
    from simulators._timetable import _cycle

    cycle = _cycle(least)
    assert cycle >= least or cycle == 86_400
    assert 86_400 % cycle == 0
    assert cycle % 120 == 0


@pytest.mark.parametrize("day", [dt.date(2024, 3, 31), dt.date(2024, 10, 27)])
def test_every_bus_has_a_trip_across_the_clock_changes(day: dt.date) -> None:
    """A 23- or 25-hour service day: each bus still serves (or waits for) one trip at every
    moment, with the trips in order."""
    city = _city()
    timetable = city.timetable
    assert timetable is not None
    start = timetable.anchor(day) - 3 * 3600
    for bus in range(len(timetable.bus_ids)):
        last = None
        for k in range(0, 30 * 3600, 60):
            trip = timetable.state(bus, start + k).trip
            key = (trip.day, trip.index)
            assert last is None or key >= last
            last = key
