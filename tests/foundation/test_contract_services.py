"""The wire contract through the real broker and the real database."""

from __future__ import annotations

import itertools
import queue
import uuid

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from smartcity import Influxd, Mosquitto
from telemetry import (
    TS_MIN_NS,
    Batch,
    LineProtocolEncoder,
    Reading,
    TopicKind,
    Topics,
    decode_batch,
    encode_batch,
)
from tests.telemetry.strategies import readings

pytestmark = pytest.mark.integration

TS = TS_MIN_NS + 10**18


def connect(broker: Mosquitto, client_id: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    props = Properties(PacketTypes.CONNECT)
    props.ReceiveMaximum = 1000
    client.connect(broker.host, broker.port, keepalive=30, properties=props)
    client.loop_start()
    return client


def test_a_batch_round_trips_through_mosquitto(mosquitto: Mosquitto, topic_root: str) -> None:
    topics = Topics(topic_root)
    received: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    subscribed: queue.Queue[bool] = queue.Queue()
    sub = connect(mosquitto, f"sub-{uuid.uuid4().hex[:6]}")
    sub.on_message = lambda _c, _u, msg: received.put(msg)
    sub.on_subscribe = lambda *_a: subscribed.put(True)
    sub.subscribe(topics.shared("ingest", TopicKind.TELEMETRY), qos=1)
    subscribed.get(timeout=10)

    pub = connect(mosquitto, f"pub-{uuid.uuid4().hex[:6]}")
    sent = [
        Batch(
            gateway="cabinet-017",
            seq=seq,
            readings=[
                Reading(
                    device=f"loop-{i}",
                    measurement="TrafficFlowObserved",
                    ts=TS + seq * 10**9 + i,
                    fields={"intensity": 500.0 + i, "vehicleCount": i},
                    tags={"lane": str(i % 2)},
                )
                for i in range(100)
            ],
        )
        for seq in range(5)
    ]
    for batch in sent:
        info = pub.publish(topics.telemetry(batch.gateway), encode_batch(batch), qos=1)
        info.wait_for_publish(timeout=10)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS

    got = []
    for _ in sent:
        msg = received.get(timeout=10)
        assert msg.qos == 1
        gateway, kind = topics.parse(msg.topic)
        assert (gateway, kind) == ("cabinet-017", TopicKind.TELEMETRY)
        got.append(decode_batch(msg.payload))
    assert got == sent
    for client in (pub, sub):
        client.disconnect()
        client.loop_stop()


def _points(influxd: Influxd, db: str, measurement: str) -> list[dict[str, object]]:
    answer = influxd.query(f'SELECT * FROM "{measurement}"', db=db)
    series = answer["results"][0]["series"]
    columns = series[0]["columns"]
    return [dict(zip(columns, row, strict=True)) for row in series[0]["values"]]


def _field_types(influxd: Influxd, db: str, measurement: str) -> dict[str, str]:
    answer = influxd.query(f'SHOW FIELD KEYS FROM "{measurement}"', db=db)
    return dict(answer["results"][0]["series"][0]["values"])


def test_encoded_readings_read_back_through_influxql(influxd: Influxd, influx_db: str) -> None:
    enc = LineProtocolEncoder()
    batch = [
        Reading(
            device=f"loop-{i}",
            measurement="TrafficFlowObserved",
            ts=TS + i,
            fields={"intensity": 12 + i, "averageVehicleSpeed": 40.5, "vehicleCount": i},
            tags={"lane": "1"},
        )
        for i in range(1000)
    ]
    influxd.write(influx_db, enc.encode("cabinet-017", batch))
    assert influxd.count(influx_db, "TrafficFlowObserved", "intensity") == 1000
    # Writing the same readings again (a replay) adds nothing: identity is tags + time.
    influxd.write(influx_db, enc.encode("cabinet-017", batch))
    assert influxd.count(influx_db, "TrafficFlowObserved", "intensity") == 1000
    types = _field_types(influxd, influx_db, "TrafficFlowObserved")
    assert types == {
        "intensity": "float",  # declared float in the vocabulary, sent as int
        "averageVehicleSpeed": "float",
        "vehicleCount": "integer",
        "quality": "string",
    }
    first = _points(influxd, influx_db, "TrafficFlowObserved")[0]
    assert first["gateway"] == "cabinet-017"
    assert first["device"] == "loop-0"
    assert first["lane"] == "1"
    assert first["time"] == TS
    assert first["quality"] == "good"


_counter = itertools.count()


@given(reading=readings())
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_any_valid_reading_survives_a_real_influxd(
    influxd: Influxd, influx_db: str, reading: Reading
) -> None:
    # A fresh measurement per example: InfluxDB fixes a field's type per shard on first write.
    measurement = f"M{next(_counter)}"
    reading = Reading(
        device=reading.device,
        measurement=measurement,
        ts=reading.ts,
        fields=reading.fields,
        tags=reading.tags,
        quality=reading.quality,
        clock=reading.clock,
    )
    influxd.write(influx_db, LineProtocolEncoder().encode("gw-x", [reading]))
    [point] = _points(influxd, influx_db, measurement)
    assert point["time"] == reading.ts
    assert point["gateway"] == "gw-x"
    assert point["device"] == reading.device
    for key, value in reading.tags.items():
        assert point[key] == value
    types = _field_types(influxd, influx_db, measurement)
    expected_type = {bool: "boolean", int: "integer", float: "float", str: "string"}
    for key, value in reading.fields.items():
        assert types[key] == expected_type[type(value)]
        if isinstance(value, float):
            # InfluxDB's JSON prints large floats as integer digits ("67666427118600940"):
            # the shortest repr padded with zeros, which parses back to the same float64.
            assert float(point[key]) == value  # type: ignore[arg-type]
        else:
            assert point[key] == value
    assert point["quality"] == reading.quality
    assert point.get("clock") == (None if reading.clock == "device" else reading.clock)
