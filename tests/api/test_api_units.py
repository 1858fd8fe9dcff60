"""Pure logic of the API: InfluxQL building, AQI bands, fan-out policy, rate limits, alerts."""

from __future__ import annotations

import datetime as _dt
import re
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api._auth import RateLimiter
from api._params import iso
from api.standards import aqi_band
from api.state import (
    AlertEngine,
    Event,
    Hub,
    Inventory,
    Latest,
    Rule,
    StreamFilter,
    completeness_of,
    congestion_level,
)
from api.storage import SeriesQuery, quote_ident, quote_string

_UNQUOTED_QUOTE = re.compile(r"(?<!\\)(?:\\\\)*'")


@given(st.text())
def test_quote_string_leaves_no_unescaped_quote_inside(value: str) -> None:
    quoted = quote_string(value)
    assert quoted[0] == quoted[-1] == "'"
    inner = quoted[1:-1]
    # Every quote inside is preceded by an odd number of backslashes.
    for match in re.finditer("'", inner):
        run = len(inner[: match.start()]) - len(inner[: match.start()].rstrip("\\"))
        assert run % 2 == 1
    assert not inner.endswith("\\") or (len(inner) - len(inner.rstrip("\\"))) % 2 == 0


@given(st.text())
def test_quote_ident_escapes_double_quotes(value: str) -> None:
    inner = quote_ident(value)[1:-1]
    for match in re.finditer('"', inner):
        run = len(inner[: match.start()]) - len(inner[: match.start()].rstrip("\\"))
        assert run % 2 == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"measurement": 'x" ; DROP'}, "measurement"),
        ({"field": "a b"}, "field"),
        ({"devices": [(None, "d' OR 1=1")]}, "device"),
        ({"devices": [("g/x", "d")]}, "gateway"),
        ({"window": "5 m"}, "window"),
        ({"aggregate": "median; DROP"}, "aggregate"),
        ({"lane": "1' OR '1"}, "lane"),
    ],
)
def test_series_query_refuses_what_does_not_match(change: dict[str, object], message: str) -> None:
    values: dict[str, object] = {
        "measurement": "AirQualityObserved", "field": "pm25", "devices": [(None, "d1")],
        "start_ns": 0, "end_ns": 10, "window": "5m", "aggregate": "mean",
    }
    values.update(change)
    with pytest.raises(ValueError, match=message):
        SeriesQuery(**values).render()  # type: ignore[arg-type]


def test_series_query_renders_quoted() -> None:
    q = SeriesQuery(measurement="AirQualityObserved", field="pm25", devices=[("gw", "d1")],
                    start_ns=1, end_ns=2, window="5m", aggregate="max", lane="1").render()
    assert q == (
        'SELECT max("pm25") AS "value" FROM "AirQualityObserved" WHERE '
        "((\"gateway\" = 'gw' AND \"device\" = 'd1')) AND time >= 1 AND time < 2 "
        "AND \"lane\" = '1' GROUP BY time(5m) fill(none)"
    )


@pytest.mark.parametrize(
    ("fields", "band"),
    [
        ({"pm25": 5.0}, "good"), ({"pm25": 10.0}, "fair"), ({"pm25": 24.9}, "moderate"),
        ({"pm25": 49.0, "no2": 10.0}, "poor"), ({"pm10": 120.0}, "very poor"),
        ({"o3": 400.0, "pm25": 1.0}, "extremely poor"), ({"co": 1.0}, None), ({}, None),
    ],
)
def test_aqi_band_is_the_worst_pollutant(fields: dict[str, float], band: str | None) -> None:
    assert aqi_band(fields)[0] == band


def test_congestion_levels() -> None:
    assert congestion_level(60.0, 50.0)[0] == "free"
    assert congestion_level(30.0, 50.0)[0] == "moderate"
    assert congestion_level(20.0, 50.0)[0] == "heavy"
    assert congestion_level(14.9, 50.0)[0] == "severe"
    assert congestion_level(None, 50.0)[0] == "unknown"


def test_hub_drops_oldest_for_a_full_queue_only() -> None:
    hub = Hub(queue_size=3)
    slow = hub.subscribe(StreamFilter())
    picky = hub.subscribe(StreamFilter(kinds=frozenset({"air"})))
    for n in range(5):
        hub.publish(Event("traffic", "d", "g", None, str(n).encode()))
    hub.publish(Event("air", "d", "g", None, b"air"))
    dropped, events = slow.take()
    assert dropped == 3
    assert [e.data for e in events] == [b"3", b"4", b"air"]
    assert picky.take() == (0, [Event("air", "d", "g", None, b"air")])
    assert hub.dropped_total == 3


def test_rate_limiter_refills() -> None:
    limiter = RateLimiter(rate=1000.0, burst=2)
    assert limiter.take("k") == 0.0
    assert limiter.take("k") == 0.0
    assert limiter.take("k") > 0
    time.sleep(0.01)
    assert limiter.take("k") == 0.0
    assert limiter.take("other") == 0.0


def _latest(value: float, ts: int) -> Latest:
    return Latest("gw", "aq", "AirQualityObserved", iso(ts), ts, {"pm25": value})


def test_threshold_needs_the_whole_duration() -> None:
    changes: list[tuple[str, str]] = []
    engine = AlertEngine(inventory=Inventory(), free_flow_kmh=50.0,
                         on_change=lambda t, a: changes.append((t, a.id)))
    engine.set_rules([Rule(id=1, name="pm", kind="threshold", measurement="AirQualityObserved",
                           field="pm25", op=">", threshold=35.0, ratio=None, duration_s=600,
                           severity="warning", enabled=True)])
    minute = 60 * 10**9
    for i in range(10):
        engine.on_reading(_latest(40.0, i * minute))
    assert changes == []
    engine.on_reading(_latest(40.0, 10 * minute))
    assert [t for t, _ in changes] == ["raised"]
    engine.on_reading(_latest(30.0, 11 * minute))
    assert [t for t, _ in changes] == ["raised", "resolved"]
    engine.set_rules([])
    assert engine.active == {}


_COLUMNS = ["time", "received", "min_seq", "max_seq", "readings", "rejected"]


def test_completeness_of_a_consistent_row() -> None:
    c = completeness_of(_COLUMNS, [0, 4, 0, 4, 40, 0], "1h")
    assert c is not None
    assert (c.received, c.expected, c.missing, c.readings) == (4, 5, 1, 40)
    assert c.ratio == pytest.approx(0.8)


@given(seqs=st.sets(st.integers(0, 50), min_size=1, max_size=30), cut=st.integers(0, 50))
def test_a_torn_row_is_refused_never_shown(seqs: set[int], cut: int) -> None:
    """The count sees every batch, max(seq) only those up to ``cut`` (a write in between):
    either the row still adds up, or it is refused; it never claims fewer missing than are."""
    lo, hi_seen = min(seqs), max([s for s in seqs if s <= cut], default=None)
    if hi_seen is None:
        return
    c = completeness_of(_COLUMNS, [0, len(seqs), lo, hi_seen, 0, 0], "1h")
    truly_missing = max(seqs) - lo + 1 - len(seqs)
    if c is not None:
        assert c.received <= c.expected
        assert c.missing >= 0
    else:
        assert len(seqs) > hi_seen - lo + 1
    assert c is None or max(seqs) != hi_seen or c.missing == truly_missing


def test_alert_history_survives_a_database_that_fails_and_bounds_its_buffer() -> None:
    import asyncio

    from api import Database
    from api._metrics import ApiMetrics
    from api.state import Alert, AlertHistory

    db = Database("sqlite://")  # no schema yet: every write fails
    metrics = ApiMetrics()
    history = AlertHistory(db, metrics, keep_days=1, max_pending=3)
    now = time.time_ns()
    for i in range(5):
        alert = Alert(id=f"{i:016x}", rule_id=1, rule="r", kind="threshold",
                      severity="warning", gateway="gw", started=iso(now), started_ns=now,
                      message="m")
        history.record("raised", alert, now)
    asyncio.run(history.flush())
    assert metrics.alert_history_failed.labels("retried")._value.get() == 1
    assert metrics.alert_history_failed.labels("dropped")._value.get() == 2  # 5 into 3
    db.create_schema(seed_rules=False)
    asyncio.run(history.flush())
    assert metrics.alert_history_written._value.get() == 3
    rows, total = db.alert_history(since=_dt.datetime(2000, 1, 1, tzinfo=_dt.UTC),
                                   until=_dt.datetime(2100, 1, 1, tzinfo=_dt.UTC))
    assert total == 3
    assert {r.alert_id for r in rows} == {f"{i:016x}" for i in (2, 3, 4)}  # oldest dropped
    asyncio.run(history.flush())  # nothing left, nothing written twice
    assert db.record_alert_events([{
        "alert_id": rows[0].alert_id, "transition": "raised", "at": rows[0].at,
        "rule_id": 1, "rule": "r", "kind": "threshold", "severity": "warning",
        "gateway": "gw", "message": "m"}]) == 0
    assert db.prune_alert_events(_dt.datetime(2100, 1, 1, tzinfo=_dt.UTC)) == 3


def test_alert_events_are_stored_in_one_write_each_transition_once() -> None:
    from sqlalchemy import event

    from api import Database

    db = Database("sqlite://")
    db.create_schema(seed_rules=False)
    at = _dt.datetime(2026, 1, 1, tzinfo=_dt.UTC)

    def transition(i: int, kind: str = "raised") -> dict[str, object]:
        return {
            "alert_id": f"{i:016x}", "transition": kind, "at": at, "rule_id": 1, "rule": "r",
            "kind": "congestion", "severity": "warning", "gateway": "gw", "device": f"d{i}",
            "area": None, "message": "m", "value": float(i), "by_name": None, "note": None,
        }

    inserts: list[str] = []

    @event.listens_for(db.engine, "before_cursor_execute")
    def count(_c: object, _cur: object, statement: str, *_args: object) -> None:
        if statement.lstrip().upper().startswith("INSERT"):
            inserts.append(statement)

    events = [transition(i) for i in range(50)] + [transition(3)]  # one twice in a flush
    assert db.record_alert_events(events) == 50
    assert len(inserts) == 1  # one write for the whole flush
    assert db.record_alert_events([transition(1), transition(1, "resolved")]) == 1
    # The row-by-row path (a replica stored some in between) skips what is stored.
    assert db._record_each([transition(2), transition(60)]) == 1
    rows, total = db.alert_history(since=at, until=at + _dt.timedelta(seconds=1), limit=500)
    assert total == 52
    assert {(r.alert_id, r.transition) for r in rows} == {
        *((f"{i:016x}", "raised") for i in (*range(50), 60)), (f"{1:016x}", "resolved")}
    assert next(r for r in rows if r.alert_id == f"{7:016x}").value == 7.0


def test_alert_history_writes_what_is_buffered_when_it_stops() -> None:
    import asyncio

    from api import Database
    from api._metrics import ApiMetrics
    from api.state import Alert, AlertHistory

    db = Database("sqlite://")
    db.create_schema(seed_rules=False)
    history = AlertHistory(db, ApiMetrics(), keep_days=1)
    now = time.time_ns()

    async def main() -> None:
        task = asyncio.create_task(history.run(interval_s=3600, prune_every_s=3600))
        await asyncio.sleep(0.2)  # the first prune is done; the next flush is an hour away
        for i in range(3):
            alert = Alert(id=f"{i:016x}", rule_id=1, rule="r", kind="threshold",
                          severity="warning", gateway="gw", started=iso(now), started_ns=now,
                          message="m")
            history.record("raised", alert, now)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    _, total = db.alert_history(since=_dt.datetime(2000, 1, 1, tzinfo=_dt.UTC),
                                until=_dt.datetime(2100, 1, 1, tzinfo=_dt.UTC))
    assert total == 3
