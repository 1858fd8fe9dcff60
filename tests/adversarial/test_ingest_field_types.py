"""Field types outside the vocabulary: a hostile gateway cannot block honest readings.

InfluxDB 1.x fixes a field's type per shard on its first write. The vocabulary's fields are
typed by the conformer; any other field is typed by whoever writes it first. A hostile
gateway writing ``laneCount="x"`` into the current shard made every honest ``laneCount=2.0``
of that shard a 400 ("field type conflict"): the whole honest point dead-lettered. Now each
line InfluxDB refuses for such a conflict is written again with the field renamed
(``laneCount:float``, a key no gateway can send), for whichever side wrote second, and only
that line: a point never holds both keys, and a redelivered line is stored as before.

The unit tests pin the parts: InfluxDB's message (captured from influxd 1.6.7), the line
rewrite (equal to what the encoder writes for the renamed reading), which fields are never
renamed, and the contract refusing ``:`` in names. The others run mosquitto and influxd.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest import WorkerThread
from ingest._conflicts import FieldTypeConflict, parse_conflict, rename_fields, renamed_key
from smartcity._localstack import Influxd, Mosquitto
from telemetry import (
    Batch,
    InvalidPayload,
    LineProtocolEncoder,
    Reading,
    decode_batch,
    decode_batch_partial,
    encode_batch,
)
from tests.ingest.ingest_testkit import (
    Publisher,
    make_config,
    wait_for,
)

MEASUREMENT = "TrafficFlowObserved"
HONEST = ("gw-honest-a", "gw-honest-b")
HOSTILE = "gw-hostile"
PER_GATEWAY = 100  # one-reading batches per honest gateway and phase

# Captured from influxd 1.6.7 (the JSON "error" of its 400 answers).
FLOAT_ON_STRING = (
    'partial write: field type conflict: input field "laneCount" on measurement '
    '"TrafficFlowObserved" is type float, already exists as type string dropped=1'
)
STRING_ON_FLOAT = (
    'partial write: field type conflict: input field "a" on measurement "New M,x" is type '
    "string, already exists as type float dropped=1"
)
FLOAT_ON_STRING_2 = (
    'partial write: field type conflict: input field "a" on measurement "Q" is type float, '
    "already exists as type string dropped=1"
)


# -- the message parser ------------------------------------------------------------------------


def test_the_parser_reads_influxds_field_type_conflict() -> None:
    conflict = parse_conflict(FLOAT_ON_STRING)
    assert conflict is not None
    assert (conflict.measurement, conflict.field, conflict.incoming, conflict.existing) == (
        MEASUREMENT, "laneCount", "float", "string"
    )
    other = parse_conflict(FLOAT_ON_STRING_2)
    assert other is not None
    assert (other.measurement, other.field, other.incoming, other.existing) == (
        "Q", "a", "float", "string"
    )


@pytest.mark.parametrize("message", [
    STRING_ON_FLOAT,  # a measurement name no gateway can send
    'unable to parse \'TrafficFlowObserved laneCount=\': missing field value',
    "partial write: points beyond retention policy dropped=1",
    FLOAT_ON_STRING.replace("is type float", "is type decimal"),
    FLOAT_ON_STRING.replace("type string", "type float"),  # no conflict at all
    FLOAT_ON_STRING.replace('"laneCount"', '"lane:Count"'),
    FLOAT_ON_STRING + " " + FLOAT_ON_STRING,
    FLOAT_ON_STRING + " trailing",
    "",
])
def test_the_parser_ignores_what_it_does_not_recognise(message: str) -> None:
    assert parse_conflict(message) is None


# -- the rewrite equals the encoder's renamed line -------------------------------------------

_names = st.sampled_from(["laneCount", "note", "flag", "intensity", "n", "level"])
_values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
    st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12),
)
_tag_values = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\\"),
    min_size=1, max_size=8,
)


def _influx_type(value: Any) -> str:
    """InfluxDB's type of a field value the vocabulary does not declare, as encoded."""
    if isinstance(value, bool):
        return "boolean"
    return "string" if isinstance(value, str) else "integer" if isinstance(value, int) else "float"


@settings(max_examples=300, deadline=None)
@given(
    measurement=st.sampled_from([MEASUREMENT, "CustomSensor"]),
    fields=st.dictionaries(_names, _values, min_size=1, max_size=5),
    tag=_tag_values,
    conflicts=st.lists(
        st.tuples(_names, st.sampled_from(["float", "integer", "boolean", "string"])),
        max_size=6,
    ),
)
def test_renaming_a_refused_line_gives_the_line_of_the_renamed_reading(
    measurement: str, fields: dict[str, Any], tag: str, conflicts: list[tuple[str, str]],
) -> None:
    renames: dict[tuple[str, str], str] = {}
    for field, kind in conflicts:
        key = renamed_key(FieldTypeConflict(measurement, field, kind, "unsigned"))
        if key is not None:
            renames[(field, kind)] = key
    reading = Reading(device="d 1,x", measurement=measurement, ts=1_700_000_000_000_000_000,
                      fields=fields, tags={"lane": tag})
    renamed = Reading(device="d 1,x", measurement=measurement, ts=reading.ts, tags={"lane": tag},
                      fields={renames.get((k, _influx_type(v)), k): v for k, v in fields.items()})
    [before] = LineProtocolEncoder().line_list("gw=1", [reading])
    [after] = LineProtocolEncoder().line_list("gw=1", [renamed])
    assert rename_fields(before, lambda m: renames if m == measurement else {}) == after
    assert rename_fields(before, lambda m: {}) == before


def test_rename_fields_gives_up_on_lines_it_cannot_parse() -> None:
    renames = {(MEASUREMENT, "laneCount", "float"): "laneCount:float"}

    def of(m: str) -> dict[tuple[str, str], str]:
        return {(f, t): k for (mm, f, t), k in renames.items() if mm == m}

    assert rename_fields(b"TrafficFlowObserved,device=a laneCount=2 1", of) == (
        b"TrafficFlowObserved,device=a laneCount:float=2 1"
    )
    for bad in (b"TrafficFlowObserved", b"TrafficFlowObserved laneCount", b"M a=\"x 1",
                b"M a=1", b"M =1 1", b"M a=1,b 1"):
        assert rename_fields(bad, of) is None


# -- which fields are renamed ------------------------------------------------------------------


def _reading(measurement: str, ts: int, **fields: Any) -> Reading:
    return Reading(device="loop-0", measurement=measurement, ts=ts, fields=fields)


def test_only_fields_a_gateway_may_type_are_renamed() -> None:
    def key(measurement: str, field: str, incoming: str) -> str | None:
        return renamed_key(FieldTypeConflict(measurement, field, incoming, "string"))

    assert key(MEASUREMENT, "laneCount", "float") == "laneCount:float"
    assert key("CustomSensor", "a", "integer") == "a:int"
    assert key("CustomSensor", "a", "boolean") == "a:bool"
    assert key("CustomSensor", "a", "string") == "a:string"
    assert key(MEASUREMENT, "intensity", "string") is None  # declared: the conformer types it
    assert key(MEASUREMENT, "quality", "float") is None
    assert key("CustomSensor", "clock", "float") is None
    assert key("ingest_batch", "seq", "string") is None
    assert key(MEASUREMENT, "laneCount", "unsigned") is None


def test_a_gateway_cannot_send_a_renamed_key() -> None:
    for fields, measurement in (({"laneCount:float": 2.0}, MEASUREMENT),
                                ({"laneCount": 2.0}, "TrafficFlowObserved:float")):
        payload = json.dumps({"v": 1, "gw": "gw-a", "seq": 0, "r": [
            {"d": "loop-0", "m": measurement, "t": 1, "f": fields}]}).encode()
        with pytest.raises(InvalidPayload):
            decode_batch(payload)
        assert decode_batch_partial(payload).batch.readings == []


# -- against mosquitto and influxd --------------------------------------------------------------


def _payload(gateway: str, seq: int, readings: list[Reading]) -> bytes:
    return encode_batch(Batch(gateway=gateway, seq=seq, readings=readings))


def _honest(publisher: Publisher, phase: int, base_ts: int) -> None:
    """Each honest gateway sends PER_GATEWAY readings with ``laneCount`` as a number."""
    for seq in range(PER_GATEWAY):
        for g, gw in enumerate(HONEST):
            ts = base_ts + (phase * 10_000 + g * 1000 + seq) * 10**6
            publisher.telemetry(gw, _payload(gw, phase * PER_GATEWAY + seq, [_reading(
                MEASUREMENT, ts, intensity=float(seq), occupancy=0.5, laneCount=2.0)]))
    publisher.flush()


def _hostile(publisher: Publisher, seq: int, ts: int) -> None:
    publisher.telemetry(HOSTILE, _payload(HOSTILE, seq, [_reading(
        MEASUREMENT, ts, intensity=1.0, laneCount="x")]))
    publisher.flush()


def _settle(worker: WorkerThread, messages: int) -> None:
    stats = worker.worker.stats
    wait_for(lambda: stats().messages_received >= messages, 60, f"{messages} messages")
    wait_for(lambda: stats().messages_in_flight == 0, 60, "all acked")


def _per_gateway(influxd: Influxd, db: str, field: str) -> dict[str, int]:
    answer = influxd.query(
        f'SELECT count("{field}") FROM "{MEASUREMENT}" GROUP BY "gateway"', db=db)
    return {s["tags"]["gateway"]: int(s["values"][0][1])
            for s in answer["results"][0].get("series", [])}


def _deadletters(influxd: Influxd, db: str) -> int:
    return influxd.count(db, "ingest_deadletter", "record")


def _points(influxd: Influxd, db: str, gateway: str) -> list[tuple[Any, Any]]:
    """(``laneCount``, ``laneCount:float``) of each of ``gateway``'s points, oldest first."""
    answer = influxd.query(
        f'SELECT "laneCount", "laneCount:float" FROM "{MEASUREMENT}" '
        f"WHERE \"gateway\" = '{gateway}'", db=db)
    [series] = answer["results"][0]["series"]
    return [(row[1], row[2]) for row in series["values"]]


_WARNING = "field type conflict: refused lines are stored with the field renamed"


@pytest.mark.integration
def test_a_hostile_string_field_first_in_the_shard_blocks_no_honest_reading(
    mosquitto: Mosquitto, influxd: Influxd, topic_root: str, influx_db: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = (time.time_ns() // 10**9 - 60) * 10**9
    publisher = Publisher(mosquitto, topic_root)
    worker = WorkerThread(make_config(mosquitto, influxd, topic_root, influx_db))
    sample = worker.worker.metrics.registry.get_sample_value
    try:
        with caplog.at_level(logging.WARNING, logger="ingest"), worker:
            _hostile(publisher, 0, now - 10**9)  # first: laneCount is a string in the shard
            _settle(worker, 1)
            _honest(publisher, 0, now)
            _settle(worker, 1 + 2 * PER_GATEWAY)
            _honest(publisher, 1, now)
            _hostile(publisher, 1, now - 2 * 10**9)
            _settle(worker, 2 + 4 * PER_GATEWAY)
            stats = worker.worker.stats()
    finally:
        publisher.close()
    expected = dict.fromkeys(HONEST, 2 * PER_GATEWAY)
    assert _per_gateway(influxd, influx_db, "laneCount:float") == expected
    assert _per_gateway(influxd, influx_db, "intensity") == {**expected, HOSTILE: 2}
    assert _per_gateway(influxd, influx_db, "laneCount") == {HOSTILE: 2}
    assert _deadletters(influxd, influx_db) == 0
    assert stats.readings_rejected == 0
    # Nothing is learned: every honest line is refused plain, then stored renamed, once
    # (none written plain and renamed); the conflict is logged once, not per line.
    assert sample("smartcity_ingest_field_renamed_lines_total") == 4 * PER_GATEWAY
    assert sample("smartcity_ingest_field_rename_refused_lines_total") == 0
    assert [r.getMessage() for r in caplog.records].count(_WARNING) == 1


@pytest.mark.integration
def test_a_hostile_string_field_second_in_the_shard_is_renamed_and_stored_too(
    mosquitto: Mosquitto, influxd: Influxd, topic_root: str, influx_db: str,
) -> None:
    now = (time.time_ns() // 10**9 - 60) * 10**9
    publisher = Publisher(mosquitto, topic_root)
    worker = WorkerThread(make_config(mosquitto, influxd, topic_root, influx_db))
    sample = worker.worker.metrics.registry.get_sample_value
    try:
        with worker:
            _honest(publisher, 0, now)
            _settle(worker, 2 * PER_GATEWAY)
            _hostile(publisher, 0, now - 10**9)
            _settle(worker, 1 + 2 * PER_GATEWAY)
    finally:
        publisher.close()
    assert _per_gateway(influxd, influx_db, "laneCount") == dict.fromkeys(HONEST, PER_GATEWAY)
    assert _per_gateway(influxd, influx_db, "laneCount:string") == {HOSTILE: 1}
    assert _deadletters(influxd, influx_db) == 0
    assert sample("smartcity_ingest_field_renamed_lines_total") == 1


@pytest.mark.integration
def test_a_reading_is_renamed_only_in_the_shard_where_it_conflicts_and_again_when_redelivered(
    mosquitto: Mosquitto, influxd: Influxd, topic_root: str, influx_db: str,
) -> None:
    """Two shards: an old one where the hostile gateway typed ``laneCount`` first (string),
    the current one where an honest gateway did (float). One honest message with a reading
    in each, delivered twice: each point holds one key, the one of its own shard."""
    now = (time.time_ns() // 10**9 - 60) * 10**9
    old = now - 30 * 24 * 3600 * 10**9  # weeks back: another shard group (7 days long)
    honest, other = HONEST
    publisher = Publisher(mosquitto, topic_root)
    worker = WorkerThread(make_config(mosquitto, influxd, topic_root, influx_db))
    sample = worker.worker.metrics.registry.get_sample_value
    message = _payload(honest, 0, [_reading(MEASUREMENT, old + 10**9, laneCount=2.0),
                                   _reading(MEASUREMENT, now, laneCount=2.0)])
    try:
        with worker:
            _hostile(publisher, 0, old)  # the old shard: laneCount is a string there
            publisher.telemetry(other, _payload(other, 0, [
                _reading(MEASUREMENT, now - 10**9, laneCount=1.0)]))  # the current: a float
            publisher.flush()
            _settle(worker, 2)
            publisher.telemetry(honest, message)
            publisher.flush()
            _settle(worker, 3)
            first = _points(influxd, influx_db, honest)
            publisher.telemetry(honest, message)  # redelivered, as after a lost ack
            publisher.flush()
            _settle(worker, 4)
            stats = worker.worker.stats()
    finally:
        publisher.close()
    assert first == [(None, 2.0), (2.0, None)]  # old shard renamed, current shard plain
    assert _points(influxd, influx_db, honest) == first  # no second key on either point
    assert _points(influxd, influx_db, other) == [(1.0, None)]
    assert _deadletters(influxd, influx_db) == 0
    assert stats.readings_rejected == 0
    assert sample("smartcity_ingest_field_renamed_lines_total") == 2  # once per delivery
