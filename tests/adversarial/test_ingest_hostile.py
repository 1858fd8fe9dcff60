"""A hostile gateway against a real ingest worker (mosquitto + influxd): honest gateways
publish beside it, and what they sent is compared with what InfluxDB holds.

Each test is an attack a security review measured on the worker before it was hardened:

- field-type poisoning: InfluxDB 1.x fixes a field's type per shard on first write, so one
  string ``intensity`` (or a string ``seq`` under ``ingest_batch``, or any point stamped
  days ahead) made every honest point of that shard a "field type conflict": dead-lettered
  and acked, 0 of 200 stored;
- a string value ending in a newline passed the contract (``$`` matches before a trailing
  newline), split a line of line protocol in two, and the bisection of the 400 shifted its
  indices: IndexError, the worker hung, 0 of 200 honest batches stored;
- a dead-letter record of ~300 KB of control characters became ~1.8 MB of JSON, over the
  broker's ``max_packet_size``: the broker disconnected the worker, again on every
  redelivery;
- dead letters were acked on any PUBACK (0x10 "no matching subscribers" included): with
  nobody subscribed they were gone; now they are InfluxDB points the CLI lists;
- a message that raised an unexpected exception stopped the worker's task group.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from typer.testing import CliRunner

from ingest import WorkerThread
from smartcity._localstack import Influxd, Mosquitto
from tests.ingest.ingest_testkit import (
    Publisher,
    batch_payload,
    make_config,
    wait_for,
)

pytestmark = pytest.mark.integration

HONEST = ("gw-honest-a", "gw-honest-b")
HOSTILE = "gw-hostile"
MEASUREMENT = "TrafficFlowObserved"
BATCHES = 100  # per honest gateway: 200 in all
DEADLETTERS = "ingest_deadletter"


@pytest.fixture
def now_ts() -> int:
    """A minute ago, whole seconds: the honest gateways' clock."""
    return (time.time_ns() // 10**9 - 60) * 10**9


def hostile_payload(seq: int, reading: dict[str, Any]) -> bytes:
    return json.dumps({"v": 1, "gw": HOSTILE, "seq": seq, "r": [reading]}).encode()


def series(influxd: Influxd, db: str, query: str) -> dict[str, int]:
    """``{gateway: value}`` of a ``... GROUP BY "gateway"`` query with one aggregate."""
    answer = influxd.query(query, db=db)
    return {
        s["tags"]["gateway"]: int(s["values"][0][1])
        for s in answer["results"][0].get("series", [])
    }


def stored(influxd: Influxd, db: str) -> dict[str, tuple[int, int]]:
    """Per gateway: (readings stored, distinct batches in the bookkeeping)."""
    readings = series(influxd, db, f'SELECT count("intensity") FROM "{MEASUREMENT}" '
                                   'GROUP BY "gateway"')
    batches = series(influxd, db, 'SELECT count(distinct("seq")) FROM "ingest_batch" '
                                  'GROUP BY "gateway"')
    return {gw: (readings.get(gw, 0), batches.get(gw, 0)) for gw in HONEST}


def publish_honest(publisher: Publisher, ts: int) -> dict[str, tuple[int, int]]:
    """Every honest gateway publishes BATCHES one-reading batches; returns what was sent."""
    for seq in range(BATCHES):
        for index, gw in enumerate(HONEST):
            publisher.telemetry(gw, batch_payload(gw, index, seq, 1, ts))
    publisher.flush()
    return dict.fromkeys(HONEST, (BATCHES, BATCHES))


def run_attack(
    mosquitto: Mosquitto, influxd: Influxd, topic_root: str, db: str, now_ts: int,
    attack: Callable[[Publisher], None], **config: Any,
) -> tuple[WorkerThread, dict[str, tuple[int, int]]]:
    """The hostile gateway attacks first (processed before anything else), then the honest
    gateways publish; waits until the worker holds no message. Returns the worker (stopped)
    and what the honest gateways sent."""
    publisher = Publisher(mosquitto, topic_root)
    worker = WorkerThread(make_config(mosquitto, influxd, topic_root, db, **config))
    try:
        with worker:
            attack(publisher)
            publisher.flush()
            wait_for(lambda: worker.worker.stats().messages_received >= 1, 20, "the attack")
            wait_for(lambda: worker.worker.stats().messages_in_flight == 0, 20, "attack done")
            sent = publish_honest(publisher, now_ts)
            total = sum(b for _, b in sent.values())
            wait_for(
                lambda: worker.worker.stats().messages_received >= total + 1, 60, "delivery"
            )
            wait_for(lambda: worker.worker.stats().messages_in_flight == 0, 60, "all acked")
    finally:
        publisher.close()
    return worker, sent


def deadletters(influxd: Influxd, db: str) -> list[dict[str, Any]]:
    answer = influxd.query(f'SELECT * FROM "{DEADLETTERS}"', db=db)
    out = []
    for s in answer["results"][0].get("series", []):
        columns = s["columns"]
        out.extend(dict(zip(columns, row, strict=True)) for row in s["values"])
    return out


# -- field-type poisoning --------------------------------------------------------------------


def test_a_string_in_a_float_field_cannot_poison_the_honest_gateways_shard(
    mosquitto: Mosquitto, influxd: Influxd, topic_root: str, influx_db: str, now_ts: int,
) -> None:
    def attack(pub: Publisher) -> None:
        pub.telemetry(HOSTILE, hostile_payload(0, {
            "d": "loop-0", "m": MEASUREMENT, "t": now_ts, "f": {"intensity": "x"},
        }))

    worker, sent = run_attack(mosquitto, influxd, topic_root, influx_db, now_ts, attack)
    assert stored(influxd, influx_db) == sent
    [record] = deadletters(influxd, influx_db)
    assert (record["gateway"], record["kind"]) == (HOSTILE, "invalid_readings")
    assert "field_type" in record["record"]
    metrics = worker.worker.metrics.registry.get_sample_value
    assert metrics("smartcity_ingest_readings_refused_total", {"reason": "field_type"}) == 1


def test_integers_in_float_fields_are_stored_as_floats_not_refused(
    mosquitto: Mosquitto, influxd: Influxd, topic_root: str, influx_db: str, now_ts: int,
) -> None:
    """Coercion where lossless: a gateway sending ``540`` for a float field (first in the
    shard) neither poisons it nor loses its reading."""
    def attack(pub: Publisher) -> None:
        pub.telemetry(HOSTILE, hostile_payload(0, {
            "d": "loop-0", "m": MEASUREMENT, "t": now_ts, "f": {"intensity": 540},
        }))

    _, sent = run_attack(mosquitto, influxd, topic_root, influx_db, now_ts, attack)
    assert stored(influxd, influx_db) == sent
    assert influxd.count(influx_db, MEASUREMENT, "intensity") == 2 * BATCHES + 1
    assert deadletters(influxd, influx_db) == []


def test_a_reading_under_a_reserved_measurement_cannot_break_the_bookkeeping(
    mosquitto: Mosquitto, influxd: Influxd, topic_root: str, influx_db: str, now_ts: int,
) -> None:
    def attack(pub: Publisher) -> None:
        pub.telemetry(HOSTILE, hostile_payload(0, {
            "d": "loop-0", "m": "ingest_batch", "t": now_ts,
            "f": {"seq": "x", "readings": "x", "rejected": "x", "dup": "x"},
        }))

    _, sent = run_attack(mosquitto, influxd, topic_root, influx_db, now_ts, attack)
    assert stored(influxd, influx_db) == sent
    [record] = deadletters(influxd, influx_db)
    assert "reserved_measurement" in record["record"]


def _shard_group_end(ts: int) -> int:
    week = 7 * 24 * 3600 * 10**9  # autogen (infinite retention): 7-day shard groups
    return ts - ts % week + week


def test_a_reading_stamped_days_ahead_is_refused_and_poisons_no_future_shard(
    mosquitto: Mosquitto, influxd: Influxd, topic_root: str, influx_db: str, now_ts: int,
) -> None:
    """Outside the vocabulary (``CustomSensor``) types are first-write-wins: only the clock
    check keeps a hostile point out of the shard the honest gateways write into next."""
    ahead = min(now_ts + 24 * 3600 * 10**9, _shard_group_end(now_ts) - 10**9)
    ahead = max(ahead, now_ts + 400 * 10**9)

    def attack(pub: Publisher) -> None:
        pub.telemetry(HOSTILE, hostile_payload(0, {
            "d": "s-0", "m": "CustomSensor", "t": ahead, "f": {"level": "x"},
        }))

    def custom(gw: str, seq: int, ts: int) -> bytes:
        return json.dumps({"v": 1, "gw": gw, "seq": seq, "r": [
            {"d": "s-1", "m": "CustomSensor", "t": ts, "f": {"level": 1.5}},
        ]}).encode()

    publisher = Publisher(mosquitto, topic_root)
    config = make_config(mosquitto, influxd, topic_root, influx_db)
    try:
        with WorkerThread(config) as worker:
            attack(publisher)
            publisher.flush()
            wait_for(lambda: worker.worker.stats().messages_in_flight == 0
                     and worker.worker.stats().messages_received >= 1, 20, "the attack")
            # Honest gateways: their clocks within the allowance (one 2 min ahead).
            for seq in range(BATCHES):
                for gw in HONEST:
                    publisher.telemetry(gw, custom(gw, seq, now_ts + seq * 10**6))
            publisher.telemetry(HONEST[0], custom(HONEST[0], BATCHES, now_ts + 180 * 10**9))
            publisher.flush()
            wait_for(lambda: worker.worker.stats().messages_received >= 2 * BATCHES + 2, 60,
                     "delivery")
            wait_for(lambda: worker.worker.stats().messages_in_flight == 0, 60, "all acked")
    finally:
        publisher.close()
    assert influxd.count(influx_db, "CustomSensor", "level") == 2 * BATCHES + 1
    future = influxd.query(
        f'SELECT count("level") FROM "CustomSensor" WHERE time > {now_ts + 300 * 10**9}',
        db=influx_db,
    )
    assert "series" not in future["results"][0]
    [record] = deadletters(influxd, influx_db)
    assert "future_timestamp" in record["record"]


# -- a newline in a string value ---------------------------------------------------------------


def test_a_string_ending_in_a_newline_is_refused_and_the_worker_keeps_storing(
    mosquitto: Mosquitto, influxd: Influxd, topic_root: str, influx_db: str, now_ts: int,
) -> None:
    """InfluxDB 1.6 stores a quoted newline; the harm was the worker's. With one reading
    refused at decode (so lines map to readings through an index) and one InfluxDB refuses
    (400), the bisection cut the message at raw newlines: every index after the string
    shifted by one, past the end of the map: IndexError in the write task."""
    def attack(pub: Publisher) -> None:
        pub.telemetry(HOSTILE, json.dumps({"v": 1, "gw": HOSTILE, "seq": 0, "r": [
            {"d": "bus-1", "m": "Vehicle", "t": now_ts,
             "f": {"latitude": 59.9, "routeId": "31\n"}},
            {"d": "loop-9", "m": MEASUREMENT, "t": now_ts, "f": {"intensity": 1.0}},
            {"d": "loop-9", "m": MEASUREMENT, "t": now_ts + 1, "f": {"intensity": "x"}},
            {"d": "loop-9", "m": MEASUREMENT, "t": 5, "f": {"intensity": 2.0}},
        ]}).encode())

    _, sent = run_attack(mosquitto, influxd, topic_root, influx_db, now_ts, attack)
    assert stored(influxd, influx_db) == sent
    assert influxd.count(influx_db, "Vehicle", "latitude") == 0
    [record] = deadletters(influxd, influx_db)
    assert record["gateway"] == HOSTILE


# -- dead letters: capped, durable, listed ---------------------------------------------------


def test_a_huge_deadletter_record_still_fits_the_brokers_packet_limit(
    mosquitto_factory: Callable[..., Mosquitto], influxd: Influxd, topic_root: str,
    influx_db: str, now_ts: int,
) -> None:
    """deploy/mosquitto/smartcity.conf: max_packet_size 1100000. 300 KB of control
    characters used to make a 1.8 MB record (each one ``\\u0001`` in JSON)."""
    broker = mosquitto_factory(extra_config="max_packet_size 1100000\n")
    garbage = b"\x01" * 300_000

    def attack(pub: Publisher) -> None:
        pub.telemetry(HOSTILE, garbage)

    _, sent = run_attack(broker, influxd, topic_root, influx_db, now_ts, attack)
    assert stored(influxd, influx_db) == sent
    [record] = deadletters(influxd, influx_db)
    assert record["kind"] == "too_large"
    assert record["payload_size"] == len(garbage)
    body = json.loads(record["record"])
    assert body["payload_truncated"] is True
    assert len(record["record"].encode()) <= 64 * 1024


def test_deadletters_are_stored_durably_with_nobody_subscribed_and_listed_by_the_cli(
    mosquitto: Mosquitto, influxd: Influxd, topic_root: str, influx_db: str, now_ts: int,
) -> None:
    """Nobody subscribes to the dead-letter topic (PUBACK 0x10): the records are InfluxDB
    points all the same, and ``smartcity ingest deadletters list`` shows them."""
    bad = [b"not json", b'{"v": 99, "gw": "gw-hostile", "seq": 1, "r": []}',
           hostile_payload(2, {"d": "x", "m": MEASUREMENT, "t": 5, "f": {"intensity": 1.0}})]

    def attack(pub: Publisher) -> None:
        for payload in bad:
            pub.telemetry(HOSTILE, payload)

    _, sent = run_attack(mosquitto, influxd, topic_root, influx_db, now_ts, attack)
    assert stored(influxd, influx_db) == sent
    records = deadletters(influxd, influx_db)
    assert sorted(r["kind"] for r in records) == [
        "invalid_readings", "malformed", "unsupported_version"
    ]
    originals = {json.loads(r["record"])["payload"].encode() for r in records}
    assert originals == set(bad)

    from ingest.cli import app

    result = CliRunner().invoke(app, [
        "deadletters", "list", "--influx-url", influxd.url, "--database", influx_db,
        "--json",
    ])
    assert result.exit_code == 0, result.output
    listed = [json.loads(line) for line in result.output.splitlines() if line.strip()]
    assert sorted(r["kind"] for r in listed) == sorted(r["kind"] for r in records)
    assert all(r["gateway"] == HOSTILE for r in listed)
    assert {r["payload"].encode() for r in listed} == set(bad)


# -- a worker survives any single message ----------------------------------------------------


def test_bad_utf8_inside_one_reading_stops_nothing(
    mosquitto: Mosquitto, influxd: Influxd, topic_root: str, influx_db: str, now_ts: int,
) -> None:
    """With msgspec 0.23 this used to escape the codec and stop the worker (16 exits in
    40 s under a supervisor, 0 of 200 honest batches stored)."""
    payload = (
        b'{"v":1,"gw":"gw-hostile","seq":0,"r":[{"d":"loop-\xff","m":"TrafficFlowObserved",'
        b'"t":' + str(now_ts).encode() + b',"f":{"intensity":1.0}}]}'
    )

    def attack(pub: Publisher) -> None:
        pub.telemetry(HOSTILE, payload)

    _, sent = run_attack(mosquitto, influxd, topic_root, influx_db, now_ts, attack)
    assert stored(influxd, influx_db) == sent


def test_an_unexpected_exception_is_deadlettered_and_the_worker_goes_on(
    mosquitto: Mosquitto, influxd: Influxd, topic_root: str, influx_db: str, now_ts: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug reached by one message (here: injected into the bookkeeping of the hostile
    gateway's batches) is that message's dead letter, with the traceback's summary."""
    import ingest._batcher

    real = ingest._batcher.bookkeeping_line

    def broken(**kwargs: Any) -> str:
        if kwargs["gateway"] == HOSTILE:
            raise ZeroDivisionError("injected")
        return real(**kwargs)

    monkeypatch.setattr(ingest._batcher, "bookkeeping_line", broken)

    def attack(pub: Publisher) -> None:
        pub.telemetry(HOSTILE, batch_payload(HOSTILE, 9, 0, 1, now_ts))

    worker, sent = run_attack(mosquitto, influxd, topic_root, influx_db, now_ts, attack)
    assert stored(influxd, influx_db) == sent
    [record] = deadletters(influxd, influx_db)
    assert record["kind"] == "internal_error"
    assert "ZeroDivisionError: injected" in record["reason"]
    assert "broken" in record["reason"]  # where it was raised
    assert worker.worker.stats().deadletters == 1


# -- series cardinality --------------------------------------------------------------------------


def test_a_gateway_inventing_device_ids_is_held_to_its_series_budget(
    mosquitto: Mosquitto, influxd: Influxd, topic_root: str, influx_db: str, now_ts: int,
) -> None:
    """InfluxDB 1.x refuses every write that would create a series past its
    max-series-per-database (1,000,000 by default): a gateway writing ever new device ids
    could lock every honest gateway's new devices out. Past its budget a gateway's new
    series are refused, its known series still flow, the honest gateways lose nothing."""
    budget = 300

    def attack(pub: Publisher) -> None:
        for seq in range(3):
            pub.telemetry(HOSTILE, json.dumps({"v": 1, "gw": HOSTILE, "seq": seq, "r": [
                {"d": f"fake-{seq}-{i}", "m": MEASUREMENT, "t": now_ts + i,
                 "f": {"intensity": 1.0}} for i in range(200)
            ]}).encode())
        # a series it created before the budget ran out keeps being stored
        pub.telemetry(HOSTILE, hostile_payload(3, {
            "d": "fake-0-0", "m": MEASUREMENT, "t": now_ts + 5000, "f": {"intensity": 2.0},
        }))

    worker, sent = run_attack(
        mosquitto, influxd, topic_root, influx_db, now_ts, attack,
        intake={"max_series_per_gateway": budget},
    )
    assert stored(influxd, influx_db) == sent
    hostile = series(influxd, influx_db, f'SELECT count("intensity") FROM "{MEASUREMENT}" '
                                         f"WHERE \"gateway\" = '{HOSTILE}' GROUP BY \"gateway\"")
    assert hostile == {HOSTILE: budget + 1}
    metrics = worker.worker.metrics.registry.get_sample_value
    assert metrics("smartcity_ingest_readings_refused_total", {"reason": "series_budget"}) == 300
    kinds = {r["kind"] for r in deadletters(influxd, influx_db)}
    assert kinds == {"invalid_readings"}
