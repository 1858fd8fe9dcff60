"""The per-gateway dead-letter budget: the token bucket with its clocks injected, the summary
points, the configuration, and a hostile gateway flooding a real worker (mosquitto +
influxd) with garbage beside an honest one."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import line_protocol_parser
import pytest
from ingest_testkit import Publisher, batch_payload, count_points, make_config, wait_for

from ingest import ConfigError, IngestMetrics, WorkerThread, load_config
from ingest._deadletter import DeadLetters, Refusal
from ingest._dl_budget import DeadLetterBudget
from ingest._metrics import Tally
from smartcity._localstack import Influxd, Mosquitto

ROOT = "unit"
DEADLETTERS = "ingest_deadletter"


class Clock:
    """Both clocks of a budget: monotonic seconds and wall-clock nanoseconds, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def ns(self) -> int:
        return int(self.now * 1e9)


def budget(clock: Clock, **kwargs: Any) -> DeadLetterBudget:
    args: dict[str, Any] = {"rate": 1.0, "burst": 3, "summary_every": 60.0}
    return DeadLetterBudget(**{**args, **kwargs}, clock=clock, wall_ns=clock.ns)


# -- the bucket ------------------------------------------------------------------------------


def test_a_gateway_gets_its_burst_then_its_rate_and_never_more_than_the_burst() -> None:
    clock = Clock()
    b = budget(clock, rate=2.0, burst=3)
    assert [b.admit("gw-a", "malformed") for _ in range(4)] == [True, True, True, False]
    clock.now += 0.5  # one token at 2/s
    assert [b.admit("gw-a", "malformed") for _ in range(2)] == [True, False]
    clock.now += 0.25  # half a token: not enough
    assert b.admit("gw-a", "malformed") is False
    clock.now += 3600  # an hour idle refills to the burst, not beyond
    assert sum(b.admit("gw-a", "malformed") for _ in range(10)) == 3
    # Another gateway has a bucket of its own; a topic naming no gateway shares one key.
    assert b.admit("gw-b", "malformed") is True
    assert [b.admit(None, "topic") for _ in range(3)] == [True, True, True]
    assert b.admit("", "topic") is False


def test_what_is_left_out_is_summarised_once_per_window_per_gateway() -> None:
    clock = Clock()
    b = budget(clock, rate=0.001, burst=1, summary_every=60.0)
    assert b.admit("gw-a", "malformed")
    assert b.next_due == float("inf")
    first = clock.ns()
    for i in range(10):
        assert not b.admit("gw-a", "malformed" if i % 2 else "invalid")
        clock.now += 1
    assert [b.admit("gw-b", "topic") for _ in range(2)] == [True, False]  # burst 1
    assert b.next_due == 1000.0 + 60.0
    assert b.due() == []  # not yet
    clock.now = 1060.0
    [summary] = b.due()  # gw-a's window is due, gw-b's (opened 10 s later) is not
    assert (summary.gateway, summary.count) == ("gw-a", 10)
    assert summary.kinds == {"invalid": 5, "malformed": 5}
    assert summary.first_ns == first
    assert summary.last_ns == first + 9 * 10**9
    assert b.next_due == 1070.0
    clock.now = 1070.0
    [other] = b.due()
    assert (other.gateway, other.count, other.kinds) == ("gw-b", 1, {"topic": 1})
    assert b.next_due == float("inf")
    assert b.due() == []
    # The next refusal opens a new window; at shutdown every open window is due.
    assert not b.admit("gw-a", "malformed")
    assert [(s.gateway, s.count) for s in b.due(force=True)] == [("gw-a", 1)]


def test_kinds_of_a_summary_are_bounded() -> None:
    clock = Clock()
    b = budget(clock, burst=1)
    b.admit("gw-a", "k")
    for i in range(40):
        b.admit("gw-a", f"kind-{i}")
    [summary] = b.due(force=True)
    assert len(summary.kinds) == 17
    assert summary.kinds["other"] == 40 - 16
    assert sum(summary.kinds.values()) == summary.count == 40


def test_invented_gateway_ids_cannot_grow_the_buckets_nor_get_a_burst_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    b = budget(clock, burst=3, rate=0.01, max_gateways=100)
    suppressed = 0
    with caplog.at_level(logging.INFO, logger="ingest"):
        for i in range(20_000):  # 5,000 gateway ids in turn, each back after 4,999 others
            if not b.admit(f"gw-{i % 5000}", "malformed"):
                suppressed += 1
            assert len(b) <= 100
            clock.now += 0.001
    assert len(caplog.records) <= 20  # 20 s: at most 20 lines a minute in all
    # The first 100 ids had their bursts; the ids after them inherit drained buckets.
    assert 20_000 - suppressed <= 100 * 3 + 20 * 0.01 * 20_000
    summaries = b.due(force=True)
    assert sum(s.count for s in summaries) == suppressed  # no count lost
    assert len(summaries) <= 101  # the open windows, and one for every dropped bucket
    assert next(s for s in summaries if s.gateway == "*").count > suppressed // 2
    # A new gateway after a long quiet spell gets its whole burst again.
    clock.now += 3600
    assert [b.admit("gw-new", "malformed") for _ in range(4)] == [True, True, True, False]


def test_the_log_says_it_at_most_once_a_minute_per_gateway(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    b = budget(clock, rate=0.0001, burst=1, summary_every=10.0)
    with caplog.at_level(logging.INFO, logger="ingest"):
        for _ in range(3600):  # an hour of one refusal a second, summaries every 10 s
            b.admit("gw-a", "malformed")
            b.due()
            clock.now += 1
    lines = [r for r in caplog.records if getattr(r, "gateway", None) == "gw-a"]
    assert 55 <= len(lines) <= 61


def test_bad_budgets_are_refused() -> None:
    with pytest.raises(ValueError, match="rate > 0"):
        DeadLetterBudget(rate=0, burst=1)


# -- the records -----------------------------------------------------------------------------


def test_past_the_budget_a_refusal_is_counted_but_neither_stored_nor_sent() -> None:
    clock = Clock()
    sent: list[bytes] = []
    metrics, tally = IngestMetrics(), Tally()
    dl = DeadLetters(
        topic=f"{ROOT}/v1/_sys/deadletter/ingest", service="ingest", worker="w-0",
        publish=lambda _t, payload: sent.append(payload), metrics=metrics, tally=tally,
        budget=budget(clock, burst=3, rate=0.001),
    )
    lines = [
        dl.record(f"{ROOT}/v1/gw-1/telemetry", b"{" * 1000, Refusal(
            stage="decode", kind="malformed", reason="bad", gateway="gw-1", seq=i))
        for i in range(50)
    ]
    stored = [line for line in lines if line is not None]
    assert len(stored) == 3
    assert len(sent) == 3  # the notification (the cluster's stream record) only within it
    assert tally.deadletters == 3
    assert tally.deadletters_suppressed == 47
    sample = metrics.registry.get_sample_value
    assert sample("smartcity_ingest_messages_deadlettered_total", {"kind": "malformed"}) == 50
    assert sample("smartcity_ingest_deadletters_suppressed_total") == 47
    assert dl.summaries() == []  # the window is not over yet
    [(refusal, line)] = dl.summaries(force=True)
    assert (refusal.gateway, refusal.kind) == ("gw-1", "suppressed")
    point = line_protocol_parser.parse_line(line.decode())
    assert point["measurement"] == DEADLETTERS
    assert point["tags"] == {"gateway": "gw-1", "kind": "suppressed"}
    fields = point["fields"]
    assert fields["suppressed"] == 47
    assert fields["kinds"] == "malformed:47"
    assert fields["stage"] == "budget"
    assert fields["first_seen"] <= fields["last_seen"]
    record = json.loads(fields["record"])
    assert record["suppressed"] == 47
    assert "payload" not in record
    assert len(line) < 1024  # compact: no payload
    assert sample("smartcity_ingest_deadletter_summaries_total") == 1
    times = {line_protocol_parser.parse_line(s.decode())["time"] for s in stored}
    assert point["time"] not in times


def test_influxdb_refusals_and_internal_errors_are_never_left_out() -> None:
    clock = Clock()
    dl = DeadLetters(
        topic=f"{ROOT}/v1/_sys/deadletter/ingest", service="ingest", worker="w-0",
        publish=lambda _t, _p: None, metrics=IngestMetrics(), tally=Tally(),
        budget=budget(clock, burst=1, rate=0.001),
    )
    garbage = Refusal(stage="decode", kind="malformed", reason="bad", gateway="gw-1")
    assert dl.record("t", b"x", garbage) is not None
    assert dl.record("t", b"x", garbage) is None  # past the budget
    for stage, kind in (("influx", "influx_400"), ("internal", "internal_error")):
        refusal = Refusal(stage=stage, kind=kind, reason="refused", gateway="gw-1")
        assert all(dl.record("t", b"x", refusal) is not None for _ in range(20))


def test_without_a_budget_every_refusal_makes_its_record() -> None:
    sent: list[bytes] = []
    dl = DeadLetters(
        topic=f"{ROOT}/v1/_sys/deadletter/ingest", service="ingest", worker="w-0",
        publish=lambda _t, payload: sent.append(payload), metrics=IngestMetrics(),
        tally=Tally(), budget=None,
    )
    refusal = Refusal(stage="decode", kind="malformed", reason="bad", gateway="gw-1")
    assert all(dl.record("t", b"x", refusal) is not None for _ in range(500))
    assert len(sent) == 500
    assert dl.summaries(force=True) == []


# -- configuration ---------------------------------------------------------------------------


def test_the_budget_is_on_by_default_and_0_or_null_turns_it_off() -> None:
    default = load_config(None, {}).deadletters.budget
    assert default is not None
    assert (default.burst, default.rate, default.summary_every) == (1000, 1.0, 60.0)
    for off in (None, 0, {"rate": 0, "burst": 0}):
        assert load_config(None, {"deadletters": {"per_gateway": off}}).deadletters.budget is None
    assert DeadLetterBudget.configured(
        load_config(None, {"deadletters": {"per_gateway": None}}).deadletters, worker="w"
    ) is None


@pytest.mark.parametrize(("value", "reason"), [
    ({"rate": 0}, "both 0 to turn the budget off"),
    ({"burst": 0}, "both 0 to turn the budget off"),
    ({"burst": -1}, "greater than or equal to 0"),
    ({"burst": 2.5}, "valid integer"),
    ({"rate": "nan"}, "finite number"),
    ({"summary_every": 0}, "greater than or equal to 1"),
    ({"max_gateways": 0}, "greater than or equal to 1"),
    ({"brust": 10}, "Extra inputs"),
])
def test_bad_budget_settings_name_the_key_and_the_reason(
    value: dict[str, Any], reason: str
) -> None:
    with pytest.raises(ConfigError, match=r"deadletters\.per_gateway") as err:
        load_config(None, {"deadletters": {"per_gateway": value}})
    assert reason in str(err.value)


# -- against mosquitto and influxd -----------------------------------------------------------

HONEST = "gw-honest"
HOSTILE = "gw-hostile"
BURST = 20


def _deadletter_points(influxd: Influxd, db: str) -> list[dict[str, Any]]:
    answer = influxd.query(f'SELECT * FROM "{DEADLETTERS}"', db=db)
    out: list[dict[str, Any]] = []
    for s in answer["results"][0].get("series", []):
        out.extend(dict(zip(s["columns"], row, strict=True)) for row in s["values"])
    return out


def _hostile_readings(influxd: Influxd, db: str) -> int:
    answer = influxd.query(
        f"SELECT count(\"intensity\") FROM \"TrafficFlowObserved\" WHERE \"gateway\" = "
        f"'{HOSTILE}'", db=db,
    )
    series = answer["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


def _garbage(i: int, base_ts: int) -> bytes:
    """Refused whole (three kinds), or partly: one good reading and one bad one."""
    match i % 4:
        case 0:
            return b"\x00garbage" + str(i).encode() * 50
        case 1:
            return json.dumps({"v": 1, "gw": HOSTILE, "seq": "x", "r": []}).encode()
        case 2:
            return json.dumps({"v": 1, "gw": "gw-someone-else", "seq": i, "r": []}).encode()
        case _:
            return json.dumps({"v": 1, "gw": HOSTILE, "seq": i, "r": [
                {"d": "d-1", "m": "TrafficFlowObserved", "t": base_ts + i * 1000,
                 "f": {"intensity": 1.0}},
                {"d": "d-1", "m": "TrafficFlowObserved", "t": 5, "f": {"intensity": 1.0}},
            ]}).encode()


@pytest.mark.integration
def test_a_hostile_flood_is_held_to_its_budget_and_the_honest_gateway_loses_nothing(
    mosquitto: Mosquitto, influxd: Influxd, topic_root: str, influx_db: str, base_ts: int,
) -> None:
    """3,000 garbage messages beside 300 honest batches: the hostile gateway stores its burst
    of records plus summaries, the rest is counted; its good readings of partly refused
    messages and every honest reading are stored; every message is acked."""
    hostile_n, honest_n = 3000, 300
    config = make_config(
        mosquitto, influxd, topic_root, influx_db,
        deadletters={"per_gateway": {"burst": BURST, "rate": 0.01, "summary_every": 2}},
    )
    started = time.monotonic()
    honest_pub, hostile_pub = Publisher(mosquitto, topic_root), Publisher(mosquitto, topic_root)
    try:
        with WorkerThread(config) as running:
            def flood() -> None:
                for i in range(hostile_n):
                    hostile_pub.telemetry(HOSTILE, _garbage(i, base_ts))
                hostile_pub.flush(60)

            attacker = threading.Thread(target=flood)
            attacker.start()
            for seq in range(honest_n):
                honest_pub.telemetry(HONEST, batch_payload(HONEST, 0, seq, 2, base_ts))
            honest_pub.flush(60)
            attacker.join(90)
            worker = running.worker
            wait_for(lambda: worker.stats().messages_received >= hostile_n + honest_n, 60,
                     "every message")
            wait_for(lambda: worker.stats().messages_in_flight == 0, 30, "all acked")
            time.sleep(2.5)  # a summary window passes while the worker idles
            stats = worker.stats()
            assert stats.connected
            assert stats.messages_in_flight == 0
        elapsed = time.monotonic() - started
    finally:
        honest_pub.close()
        hostile_pub.close()
    final = running.worker.stats()
    # Every honest reading and batch is stored.
    assert count_points(influxd, influx_db) - _hostile_readings(influxd, influx_db) == 2 * honest_n
    # The good reading of each partly refused hostile message too: only its record went.
    assert _hostile_readings(influxd, influx_db) == hostile_n // 4
    points = [p for p in _deadletter_points(influxd, influx_db) if p["gateway"] == HOSTILE]
    full = [p for p in points if p["kind"] != "suppressed"]
    summaries = [p for p in points if p["kind"] == "suppressed"]
    assert len(full) <= BURST + int(0.01 * elapsed) + 1
    assert len(full) == final.deadletters
    assert 1 <= len(summaries) <= elapsed / 2 + 2
    left_out = hostile_n - len(full)
    sample = running.worker.metrics.registry.get_sample_value
    assert sample("smartcity_ingest_deadletters_suppressed_total") == left_out
    assert final.deadletters_suppressed == left_out
    assert sum(int(p["suppressed"]) for p in summaries) == left_out
    assert all(p["record"] and "payload" not in json.loads(p["record"]) for p in summaries)
    kinds: dict[str, int] = {}
    for p in summaries:
        for part in p["kinds"].split(","):
            kind, n = part.split(":")
            kinds[kind] = kinds.get(kind, 0) + int(n)
    assert set(kinds) <= {"malformed", "invalid", "invalid_readings"}
    refused = sum(
        sample("smartcity_ingest_messages_deadlettered_total", {"kind": k}) or 0
        for k in ("malformed", "invalid", "invalid_readings")
    )
    assert refused == hostile_n  # every refusal counted by kind, stored or not
    assert final.messages_in_flight == 0


@pytest.mark.integration
def test_with_the_budget_off_every_refusal_is_stored_as_before(
    mosquitto: Mosquitto, influxd: Influxd, topic_root: str, influx_db: str,
    publisher: Publisher, base_ts: int,
) -> None:
    n = 300
    config = make_config(mosquitto, influxd, topic_root, influx_db,
                         deadletters={"per_gateway": None})
    with WorkerThread(config) as running:
        for i in range(n):
            publisher.telemetry(HOSTILE, _garbage(i, base_ts))
        publisher.flush()
        worker = running.worker
        wait_for(lambda: worker.stats().messages_received >= n, 30, "every message")
        wait_for(lambda: worker.stats().messages_in_flight == 0, 30, "all acked")
    points = _deadletter_points(influxd, influx_db)
    assert len(points) == n
    assert {p["kind"] for p in points} == {"malformed", "invalid", "invalid_readings"}
    assert running.worker.stats().deadletters_suppressed == 0
    assert running.worker.metrics.registry.get_sample_value(
        "smartcity_ingest_deadletters_suppressed_total") == 0
    assert _hostile_readings(influxd, influx_db) == n // 4
