"""A GTFS Schedule feed (zip), read once at start, validated, held as per-trip arrays.

::

    gtfs_static_path ──▶ size check (gtfs_max_bytes) ──▶ zip directory (unpacked sizes,
      gtfs_max_unpacked_bytes) ──▶ each required file: CSV header (required columns), rows
      (types, references) ──▶ GtfsFeed: stops, routes, trips with their stop times and path,
      calendar

Required files: ``agency.txt``, ``stops.txt``, ``routes.txt``, ``trips.txt``,
``stop_times.txt``, and ``calendar.txt`` or ``calendar_dates.txt``. A defect raises
:class:`GtfsFeedError` (a :class:`api._errors.ConfigError`) naming the file, the line and the
column, so a bad feed stops the API at start with the reason; nothing in a feed can crash it
or make it read more than the limits. Stop times without a time (non-timepoints) are
interpolated by distance between the timed stops around them; the first and last stop of a
trip must have times.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import itertools
import logging
import math
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import numpy.typing as npt

from api._errors import ConfigError
from telemetry import parse_gtfs_time, service_day_anchor

__all__ = ["GtfsFeed", "GtfsFeedError", "Stop", "TripSchedule", "load_gtfs", "parse_gtfs"]

log = logging.getLogger("api.gtfs")

F64 = npt.NDArray[np.float64]

_M_PER_DEG: Final = 111_320.0
_DATE_RE: Final = re.compile(r"^\d{8}$")
_ID_MAX: Final = 255
_DAYS: Final = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
REQUIRED: Final[dict[str, tuple[str, ...]]] = {
    "agency.txt": ("agency_name", "agency_url", "agency_timezone"),
    "stops.txt": ("stop_id", "stop_lat", "stop_lon"),
    "routes.txt": ("route_id", "route_type"),
    "trips.txt": ("route_id", "service_id", "trip_id"),
    "stop_times.txt": ("trip_id", "stop_id", "stop_sequence", "arrival_time",
                       "departure_time"),
    "calendar.txt": ("service_id", *_DAYS, "start_date", "end_date"),
    "calendar_dates.txt": ("service_id", "date", "exception_type"),
}


class GtfsFeedError(ConfigError):
    """A GTFS feed that cannot be used: ``file``, ``line`` and ``column`` say where."""

    def __init__(
        self, reason: str, *, source: str, file: str | None = None, line: int | None = None,
        column: str | None = None,
    ) -> None:
        where = source + (f": {file}" if file else "") + (f" line {line}" if line else "")
        where += f" column {column}" if column else ""
        super().__init__(f"GTFS feed {where}: {reason}")
        self.source, self.file, self.line, self.column = source, file, line, column


@dataclass(frozen=True, slots=True)
class Stop:
    id: str
    name: str
    lat: float
    lon: float


@dataclass(frozen=True, slots=True)
class TripSchedule:
    """One trip's stops in order, their times (s after the service day's noon minus 12 h)
    and its path in local metres (straight lines between the stops)."""

    trip_id: str
    route_id: str
    service_id: str
    direction_id: int | None
    block_id: str | None
    stop_ids: tuple[str, ...]
    stop_sequence: tuple[int, ...]
    arr: F64
    dep: F64
    x: F64
    y: F64
    #: Distance along the path at each stop (m).
    cum: F64


@dataclass(slots=True)
class GtfsFeed:
    """A validated feed; :attr:`raw` is the zip as read (served as the static feed)."""

    raw: bytes
    source: str
    timezone: str
    stops: dict[str, Stop]
    routes: set[str]
    trips: dict[str, TripSchedule]
    #: service_id -> (weekday flags Monday first, start date, end date)
    calendar: dict[str, tuple[tuple[bool, ...], dt.date, dt.date]]
    #: (service_id, date) -> True (added) / False (removed)
    exceptions: dict[tuple[str, dt.date], bool]
    lat0: float
    lon0: float
    sha256: str = ""

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def anchor(self, day: dt.date) -> float:
        """Noon minus 12 h of ``day`` in the agency's zone (GTFS times count from it), in
        seconds since the epoch."""
        return service_day_anchor(day, self.tz)

    def active(self, service_id: str, day: dt.date) -> bool:
        """Whether ``service_id`` runs on ``day`` (calendar, then calendar_dates)."""
        exception = self.exceptions.get((service_id, day))
        if exception is not None:
            return exception
        entry = self.calendar.get(service_id)
        if entry is None:
            return False
        days, start, end = entry
        return start <= day <= end and days[day.weekday()]

    def local_xy(self, lat: float, lon: float) -> tuple[float, float]:
        """A point in the feed's local metres (equirectangular around its stops' centre)."""
        return (
            (lon - self.lon0) * _M_PER_DEG * math.cos(math.radians(self.lat0)),
            (lat - self.lat0) * _M_PER_DEG,
        )


def load_gtfs(path: Path, *, max_bytes: int, max_unpacked_bytes: int) -> GtfsFeed:
    """Read and validate the GTFS zip at ``path``; raise :class:`GtfsFeedError`."""
    source = str(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise GtfsFeedError(
                f"the file is {size} bytes, more than gtfs_max_bytes ({max_bytes})",
                source=source,
            )
        with path.open("rb") as fh:
            raw = fh.read(max_bytes + 1)
    except OSError as exc:
        raise GtfsFeedError(f"cannot be read ({exc.strerror or exc})", source=source) from exc
    if len(raw) > max_bytes:
        raise GtfsFeedError(f"more than gtfs_max_bytes ({max_bytes})", source=source)
    return parse_gtfs(raw, source=source, max_unpacked_bytes=max_unpacked_bytes)


def _read_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, budget: int, source: str
) -> tuple[str, int]:
    # The directory's sizes can lie: read at most the budget, whatever it says.
    try:
        with zf.open(info) as fh:
            data = fh.read(budget + 1)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, OSError,
            EOFError, RuntimeError) as exc:
        raise GtfsFeedError(f"cannot be unpacked ({exc})", source=source,
                            file=info.filename) from exc
    if len(data) > budget:
        raise GtfsFeedError("the files unpack to more than gtfs_max_unpacked_bytes",
                            source=source, file=info.filename)
    try:
        return data.decode("utf-8-sig"), len(data)
    except UnicodeDecodeError as exc:
        raise GtfsFeedError(f"not UTF-8 (byte {exc.start})", source=source,
                            file=info.filename) from exc


class _Table:
    """Rows of one CSV file as dicts, with the line number for errors."""

    def __init__(self, name: str, text: str, source: str) -> None:
        self.name, self.source = name, source
        self._reader = csv.reader(io.StringIO(text, newline=""))
        try:
            header = next(self._reader)
        except StopIteration:
            raise GtfsFeedError("the file is empty (no header)", source=source,
                                file=name) from None
        except csv.Error as exc:
            raise GtfsFeedError(f"bad CSV ({exc})", source=source, file=name, line=1) from exc
        self.columns = [c.strip() for c in header]
        missing = [c for c in REQUIRED[name] if c not in self.columns]
        if missing:
            raise GtfsFeedError(f"required column(s) missing: {', '.join(missing)}",
                                source=source, file=name, line=1)
        self.line = 1

    def __iter__(self) -> Iterator[dict[str, str]]:
        columns = self.columns
        while True:
            try:
                row = next(self._reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise GtfsFeedError(f"bad CSV ({exc})", source=self.source, file=self.name,
                                    line=self.line + 1) from exc
            self.line = self._reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            yield {c: v.strip() for c, v in zip(columns, row, strict=False)}

    def fail(self, reason: str, column: str | None = None) -> GtfsFeedError:
        return GtfsFeedError(reason, source=self.source, file=self.name, line=self.line,
                             column=column)

    def ident(self, row: dict[str, str], column: str) -> str:
        value = row.get(column, "")
        if not value:
            raise self.fail("empty", column)
        if len(value) > _ID_MAX or not value.isprintable():
            raise self.fail("not a printable id of at most 255 characters", column)
        return value

    def number(self, row: dict[str, str], column: str, lo: float, hi: float) -> float:
        value = row.get(column, "")
        try:
            x = float(value)
        except ValueError:
            raise self.fail(f"not a number: {value[:40]!r}", column) from None
        if not (math.isfinite(x) and lo <= x <= hi):
            raise self.fail(f"{value[:40]!r} is outside {lo:g}..{hi:g}", column)
        return x

    def integer(self, row: dict[str, str], column: str, lo: int, hi: int) -> int:
        value = row.get(column, "")
        if not value.isdigit() or not lo <= int(value) <= hi:
            raise self.fail(f"not a whole number in {lo}..{hi}: {value[:40]!r}", column)
        return int(value)

    def time(self, row: dict[str, str], column: str) -> float | None:
        value = row.get(column, "")
        if not value:
            return None
        seconds = parse_gtfs_time(value)
        if seconds is None:
            raise self.fail(f"not a time HH:MM:SS: {value[:40]!r}", column)
        return seconds

    def date(self, row: dict[str, str], column: str) -> dt.date:
        value = row.get(column, "")
        if not _DATE_RE.match(value):
            raise self.fail(f"not a date YYYYMMDD: {value[:40]!r}", column)
        try:
            return dt.date(int(value[:4]), int(value[4:6]), int(value[6:]))
        except ValueError:
            raise self.fail(f"not a date: {value!r}", column) from None


def parse_gtfs(raw: bytes, *, source: str, max_unpacked_bytes: int) -> GtfsFeed:
    """Validate a GTFS zip held in memory; raise :class:`GtfsFeedError`."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(raw))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
        raise GtfsFeedError(f"not a zip file ({exc})", source=source) from exc
    with zf:
        infos = {Path(i.filename).name: i for i in zf.infolist() if not i.is_dir()}
        declared = sum(i.file_size for i in infos.values() if i.filename.endswith(".txt"))
        if declared > max_unpacked_bytes:
            raise GtfsFeedError(
                f"the files unpack to {declared} bytes, more than gtfs_max_unpacked_bytes "
                f"({max_unpacked_bytes})", source=source)
        needed = ["agency.txt", "stops.txt", "routes.txt", "trips.txt", "stop_times.txt"]
        missing = [n for n in needed if n not in infos]
        if "calendar.txt" not in infos and "calendar_dates.txt" not in infos:
            missing.append("calendar.txt or calendar_dates.txt")
        if missing:
            raise GtfsFeedError(f"required file(s) missing: {', '.join(missing)}",
                                source=source)
        budget = max_unpacked_bytes
        texts: dict[str, str] = {}
        for name in (*needed, "calendar.txt", "calendar_dates.txt"):
            if name in infos:
                texts[name], used = _read_member(zf, infos[name], budget, source)
                budget -= used
    feed = _build(texts, source)
    feed.raw = raw
    feed.sha256 = hashlib.sha256(raw).hexdigest()
    log.info("GTFS feed loaded", extra={"source": source, "bytes": len(raw),
                                        "trips": len(feed.trips), "stops": len(feed.stops)})
    return feed


def _build(texts: dict[str, str], source: str) -> GtfsFeed:
    agency = _Table("agency.txt", texts["agency.txt"], source)
    zones = set()
    for row in agency:
        zone = row.get("agency_timezone", "")
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise agency.fail(f"unknown time zone {zone[:60]!r}", "agency_timezone") from None
        zones.add(zone)
    if len(zones) != 1:
        raise GtfsFeedError("needs one agency, or agencies sharing one agency_timezone",
                            source=source, file="agency.txt")
    stops: dict[str, Stop] = {}
    table = _Table("stops.txt", texts["stops.txt"], source)
    for row in table:
        sid = table.ident(row, "stop_id")
        if not row.get("stop_lat") and not row.get("stop_lon"):
            continue  # a generic node or boarding area: no place of its own
        stops[sid] = Stop(sid, row.get("stop_name", "")[:200],
                          table.number(row, "stop_lat", -90, 90),
                          table.number(row, "stop_lon", -180, 180))
    if not stops:
        raise GtfsFeedError("no stop with coordinates", source=source, file="stops.txt")
    routes: set[str] = set()
    table = _Table("routes.txt", texts["routes.txt"], source)
    for row in table:
        routes.add(table.ident(row, "route_id"))
    trips_meta: dict[str, tuple[str, str, int | None, str | None]] = {}
    table = _Table("trips.txt", texts["trips.txt"], source)
    for row in table:
        tid = table.ident(row, "trip_id")
        rid = table.ident(row, "route_id")
        if rid not in routes:
            raise table.fail(f"route {rid[:60]!r} is not in routes.txt", "route_id")
        direction = None
        if row.get("direction_id"):
            direction = table.integer(row, "direction_id", 0, 1)
        trips_meta[tid] = (rid, table.ident(row, "service_id"), direction,
                           row.get("block_id") or None)
    calendar: dict[str, tuple[tuple[bool, ...], dt.date, dt.date]] = {}
    if "calendar.txt" in texts:
        table = _Table("calendar.txt", texts["calendar.txt"], source)
        for row in table:
            days = tuple(bool(table.integer(row, d, 0, 1)) for d in _DAYS)
            calendar[table.ident(row, "service_id")] = (
                days, table.date(row, "start_date"), table.date(row, "end_date"))
    exceptions: dict[tuple[str, dt.date], bool] = {}
    if "calendar_dates.txt" in texts:
        table = _Table("calendar_dates.txt", texts["calendar_dates.txt"], source)
        for row in table:
            kind = table.integer(row, "exception_type", 1, 2)
            exceptions[(table.ident(row, "service_id"), table.date(row, "date"))] = kind == 1
    lat0 = float(np.mean([s.lat for s in stops.values()]))
    lon0 = float(np.mean([s.lon for s in stops.values()]))
    feed = GtfsFeed(b"", source, zones.pop(), stops, routes, {}, calendar, exceptions,
                    lat0, lon0)
    # stop_times: collect per trip, then order by stop_sequence.
    rows: dict[str, list[tuple[int, str, float | None, float | None, int]]] = {}
    table = _Table("stop_times.txt", texts["stop_times.txt"], source)
    for row in table:
        tid = table.ident(row, "trip_id")
        if tid not in trips_meta:
            raise table.fail(f"trip {tid[:60]!r} is not in trips.txt", "trip_id")
        sid = table.ident(row, "stop_id")
        if sid not in stops:
            raise table.fail(f"stop {sid[:60]!r} is not in stops.txt with coordinates",
                             "stop_id")
        arr, dep = table.time(row, "arrival_time"), table.time(row, "departure_time")
        if arr is None:
            arr = dep
        if dep is None:
            dep = arr
        seq = table.integer(row, "stop_sequence", 0, 2**31 - 1)
        rows.setdefault(tid, []).append((seq, sid, arr, dep, table.line))
    for tid, entries in rows.items():
        feed.trips[tid] = _trip(feed, tid, trips_meta[tid], sorted(entries), source)
    if not feed.trips:
        raise GtfsFeedError("no trip has stop times", source=source, file="stop_times.txt")
    return feed


def _trip(
    feed: GtfsFeed, tid: str, meta: tuple[str, str, int | None, str | None],
    entries: list[tuple[int, str, float | None, float | None, int]], source: str,
) -> TripSchedule:
    def fail(reason: str, line: int, column: str | None = None) -> GtfsFeedError:
        return GtfsFeedError(f"trip {tid[:60]!r}: {reason}", source=source,
                             file="stop_times.txt", line=line, column=column)

    if len(entries) < 2:
        raise fail("needs at least two stops", entries[0][4])
    seqs = [e[0] for e in entries]
    for a, b in itertools.pairwise(seqs):
        if a == b:
            raise fail(f"stop_sequence {a} twice", entries[0][4], "stop_sequence")
    points = [feed.local_xy(feed.stops[e[1]].lat, feed.stops[e[1]].lon) for e in entries]
    x = np.array([p[0] for p in points])
    y = np.array([p[1] for p in points])
    cum = np.concatenate(([0.0], np.cumsum(np.hypot(np.diff(x), np.diff(y)))))
    arr = np.array([np.nan if e[2] is None else e[2] for e in entries])
    dep = np.array([np.nan if e[3] is None else e[3] for e in entries])
    if np.isnan(arr[0]) or np.isnan(arr[-1]):
        raise fail("the first and last stop need times", entries[0 if np.isnan(arr[0])
                                                                   else -1][4], "arrival_time")
    timed = ~np.isnan(arr)
    if timed.sum() < len(arr):  # non-timepoints: interpolate by distance
        arr = np.interp(cum, cum[timed], arr[timed])
        dep = np.where(np.isnan(dep), arr, dep)
    if np.any(dep < arr):
        i = int(np.argmax(dep < arr))
        raise fail("departure before arrival", entries[i][4], "departure_time")
    if np.any(arr[1:] < dep[:-1]):
        i = int(np.argmax(arr[1:] < dep[:-1])) + 1
        raise fail("arrives before it left the stop before", entries[i][4], "arrival_time")
    route, service, direction, block = meta
    return TripSchedule(
        trip_id=tid, route_id=route, service_id=service, direction_id=direction,
        block_id=block, stop_ids=tuple(e[1] for e in entries),
        stop_sequence=tuple(seqs), arr=arr, dep=dep, x=x, y=y, cum=cum,
    )
