"""Malformed payloads of every kind are dead-lettered with a reason; good readings stay."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
from ingest_testkit import (
    Listener,
    Publisher,
    batch_payload,
    count_points,
    make_config,
    readings,
    wait_for,
)

from ingest import WorkerThread
from smartcity._localstack import Influxd, Mosquitto
from telemetry import Batch, Topics, encode_batch

pytestmark = pytest.mark.integration


@pytest.fixture
def deadletters(mosquitto: Mosquitto, topic_root: str):  # type: ignore[no-untyped-def]
    listener = Listener(mosquitto, Topics(topic_root).deadletter("ingest"))
    yield listener
    listener.close()


def _original(record: dict[str, Any]) -> bytes:
    if record["payload_encoding"] == "base64":
        return base64.b64decode(record["payload"])
    return str(record["payload"]).encode()


def test_every_kind_of_malformed_payload_is_deadlettered_with_a_reason(
    mosquitto: Mosquitto, influxd: Influxd, topic_root: str, influx_db: str,
    publisher: Publisher, deadletters: Listener, base_ts: int,
) -> None:
    good = batch_payload("gw-a", 0, 0, 10, base_ts)
    mixed = json.loads(batch_payload("gw-a", 0, 1, 5, base_ts))
    mixed["r"][2]["t"] = 5  # 1970: outside the contract's time window
    mixed["r"][4]["f"] = {}  # no fields
    bad: dict[str, bytes] = {
        "truncated": good[: len(good) // 2],
        "wrong_types": json.dumps({"v": 1, "gw": "gw-a", "seq": "seven", "r": []}).encode(),
        "oversize": b'{"v":1,"gw":"gw-a","seq":9,"r":[' + b" " * (300 * 1024) + b"]}",
        "version": json.dumps({"v": 99, "gw": "gw-a", "seq": 3, "r": []}).encode(),
        "bad_utf8": b'{"v":1,"gw":"gw-\xff\xfe","seq":4,"r":[{"d":"x"}]}',
        "not_json": b"\x00\x01binary",
        "gateway_mismatch": batch_payload("gw-zzz", 1, 5, 3, base_ts),
        "mixed": json.dumps(mixed).encode(),
    }
    with WorkerThread(make_config(mosquitto, influxd, topic_root, influx_db)) as running:
        publisher.telemetry("gw-a", good)
        for payload in bad.values():
            publisher.telemetry("gw-a", payload)
        publisher.flush()
        wait_for(lambda: len(deadletters.messages) >= len(bad), 20, "dead letters")
        wait_for(lambda: running.worker.stats().messages_in_flight == 0, 20, "all acked")
        stats = running.worker.stats()
    records = [json.loads(m) for m in deadletters.messages]
    assert len(records) == len(bad)
    by_payload = {_original(r): r for r in records if not r.get("payload_truncated")}
    kinds = {name: by_payload[payload]["kind"] for name, payload in bad.items()
             if payload in by_payload}
    assert kinds == {
        "truncated": "malformed",
        "wrong_types": "invalid",
        "version": "unsupported_version",
        "bad_utf8": "malformed",
        "not_json": "malformed",
        "gateway_mismatch": "invalid",
        "mixed": "invalid_readings",
    }
    oversize = next(r for r in records if r["kind"] == "too_large")
    assert "limit" in oversize["reason"]
    # Too big to keep whole in a record (64 KiB): cut, with its size and hash.
    assert oversize["payload_truncated"] is True
    assert oversize["payload_size"] == len(bad["oversize"])
    assert oversize["payload_sha256"] == hashlib.sha256(bad["oversize"]).hexdigest()
    assert bad["oversize"].startswith(_original(oversize))
    # Every record is also a point in InfluxDB, the durable copy.
    assert influxd.count(influx_db, "ingest_deadletter", "record") == len(bad)
    for record in records:
        assert record["reason"]
        assert record["stage"] == "decode"
        assert record["topic"] == Topics(topic_root).telemetry("gw-a")
    rejected = by_payload[bad["mixed"]]["rejected"]
    assert [item["index"] for item in rejected] == [2, 4]
    assert all(item["reason"] and item["path"].startswith("$.r[") for item in rejected)
    # The good batch and the three good readings of the mixed one are stored.
    assert count_points(influxd, influx_db) == 10 + 3
    assert stats.readings_rejected == 2
    assert stats.deadletters == len(bad)


def test_points_influxdb_refuses_are_deadlettered_and_the_rest_stored(
    mosquitto: Mosquitto, influxd: Influxd, topic_root: str, influx_db: str,
    publisher: Publisher, deadletters: Listener, base_ts: int,
) -> None:
    # "mood" is written as a float first; a later string value conflicts (InfluxDB 400). The
    # worker then writes it as "mood:string", which a writer other than a gateway fixed as a
    # float beforehand: still refused, so dead-lettered.
    influxd.write(influx_db, f'TrafficFlowObserved,device=x mood:string=1 {base_ts}\n'.encode())
    first = readings(0, 0, 4, base_ts)
    first = [r.__class__(**{**_as_kwargs(r), "fields": {**r.fields, "mood": 1.0}})
             for r in first]
    second = readings(0, 1, 6, base_ts)
    second[3] = second[3].__class__(
        **{**_as_kwargs(second[3]), "fields": {**second[3].fields, "mood": "happy"}}
    )
    config = make_config(mosquitto, influxd, topic_root, influx_db)
    with WorkerThread(config) as running:
        publisher.telemetry("gw-c", encode_batch(Batch(gateway="gw-c", seq=0, readings=first)))
        publisher.flush()
        wait_for(lambda: count_points(influxd, influx_db) >= 4, 20, "first batch")
        publisher.telemetry("gw-c", encode_batch(Batch(gateway="gw-c", seq=1, readings=second)))
        publisher.flush()
        wait_for(lambda: len(deadletters.messages) >= 1, 20, "the refused point")
        wait_for(lambda: running.worker.stats().messages_in_flight == 0, 20, "all acked")
        stats = running.worker.stats()
    record = json.loads(deadletters.messages[0])
    assert record["stage"] == "influx"
    assert record["kind"] == "influx_400"
    assert "conflict" in record["reason"]
    assert [item["index"] for item in record["rejected"]] == [3]
    assert 'mood:string="happy"' in record["rejected"][0]["line"]
    assert count_points(influxd, influx_db) == 4 + 5
    assert stats.readings_rejected == 1
    assert stats.readings_written == 9


def _as_kwargs(reading: Any) -> dict[str, Any]:
    return {f: getattr(reading, f) for f in reading.__struct_fields__}
