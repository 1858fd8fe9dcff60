"""Device mode: the city on ptys (firmware protocol, NMEA), Modbus TCP and local MQTT,
read back through the firmware bridge's own decoders; serial faults show up as discards."""

from __future__ import annotations

import json
import os
import select
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import sim_helpers as h
from paho.mqtt.enums import CallbackAPIVersion
from pymodbus.client import ModbusTcpClient

from firmware_bridge import (
    FrameDecoder,
    Hello,
    NmeaDecoder,
    Readings,
    decode_message,
    decode_registers,
    load_register_map,
)
from simulators import DeviceCity
from smartcity._localstack import Mosquitto

pytestmark = pytest.mark.integration


def _read(path: str, seconds: float) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    data = b""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.05)
            if ready:
                data += os.read(fd, 65536)
    finally:
        os.close(fd)
    return data


def test_devices_serve_the_city_over_ptys_modbus_and_mqtt(
    tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto], topic_root: str
) -> None:
    broker = mosquitto_factory()
    got: list[tuple[str, dict[str, object]]] = []
    lock = threading.Lock()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2)

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with lock:
            got.append((msg.topic, json.loads(msg.payload)))

    sub.on_message = on_message
    sub.connect(broker.host, broker.port)
    sub.subscribe(f"{topic_root}/#", qos=1)
    sub.loop_start()
    sc = h.scenario(
        speed=60,  # a simulated minute per second
        devices={
            "firmware": 2,
            "nmea": 1,
            "modbus_meters": 1,
            "mqtt_sensors": 3,
            "mqtt_topic": topic_root,
            "sample_interval_s": 0.2,
        },
        faults=[
            {"type": "serial_noise", "devices": ["loop-00001"], "bytes_per_s": 20},
            {"type": "crc_errors", "devices": ["loop-00001"]},
        ],
    )
    try:
        with DeviceCity(sc, directory=tmp_path, mqtt_url=broker.url) as city:
            ep = city.endpoints
            assert set(ep.firmware) == {"loop-00000", "loop-00001"}
            # Firmware protocol: HELLO then READINGS carrying the detector's current values.
            decoder = FrameDecoder()
            frames = list(decoder.feed(_read(ep.firmware["loop-00000"], 1.5)))
            messages = [decode_message(f.msg_type, f.payload) for f in frames]
            hello = next(m for m in messages if isinstance(m, Hello))
            assert {c.field for c in hello.channels} >= {"intensity", "occupancy"}
            readings = [m for m in messages if isinstance(m, Readings)]
            assert len(readings) >= 3
            assert decoder.counters["crc_error"] == decoder.counters["cobs_error"] == 0
            speeds = {v for r in readings for ch, _t, v in r.values if ch == 1}
            assert all(3 <= s <= 130 for s in speeds)
            # The noisy line: bad bytes are discarded and counted, good frames still come.
            noisy = FrameDecoder()
            good = list(noisy.feed(_read(ep.firmware["loop-00001"], 2.5)))
            assert good
            assert noisy.counters["crc_error"] + noisy.counters["cobs_error"] > 0
            # NMEA: RMC/VTG/GGA at the bus's simulated position.
            nmea = NmeaDecoder()
            sentences = list(nmea.feed(_read(ep.nmea["bus-00000"], 2.5)))
            kinds = {s.kind for s in sentences}
            assert {"RMC", "GGA"} <= kinds
            roads = city.layout.roads
            lat_range = (roads.node_lat.min() - 0.01, roads.node_lat.max() + 0.01)
            rmc = next(s for s in sentences if s.kind == "RMC")
            lat = float(rmc.fields[2][:2]) + float(rmc.fields[2][2:]) / 60
            assert lat_range[0] <= lat <= lat_range[1]
            # Modbus TCP: the meter's registers decode to the city's energy values.
            meter = ep.modbus["energy-00000"]
            regmap = load_register_map("eastron-sdm630")
            group = regmap.groups[0]
            client = ModbusTcpClient(meter["host"], port=meter["port"])
            assert client.connect()
            try:
                answer = client.read_input_registers(group.start, count=group.count, device_id=1)
            finally:
                client.close()
            assert not answer.isError()
            fields, _ = decode_registers(regmap, group, answer.registers)
            assert 215 < float(fields["voltageL1"]) < 240
            # Local MQTT sensors: JSON with a device timestamp.
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and len({t for t, _ in got}) < 3:
                time.sleep(0.05)
            with lock:
                topics = {t for t, _ in got}
                doc = got[0][1]
            assert len(topics) == 3
            assert "ts" in doc
    finally:
        sub.disconnect()
        sub.loop_stop()


def test_dropout_silences_firmware_boards_and_gps_receivers_until_it_ends(
    tmp_path: Path,
) -> None:
    """A dropout fault reaches the serial devices: the detector board leaves its lanes out
    (no READINGS frame at all while every lane is out), the GPS receiver skips its epochs;
    both speak again when the fault ends."""
    sc = h.scenario(
        speed=60,  # one simulated minute (one city step) per second
        devices={"firmware": 1, "nmea": 1, "modbus_meters": 0, "mqtt_sensors": 0,
                 "sample_interval_s": 0.2},
        faults=[{"type": "dropout", "devices": ["loop-00000", "bus-00000"], "at_s": 0,
                 "duration_s": 240}],
    )
    with DeviceCity(sc, directory=tmp_path) as city:
        ep = city.endpoints
        during = list(FrameDecoder().feed(_read(ep.firmware["loop-00000"], 1.5)))
        kinds = [type(decode_message(f.msg_type, f.payload)) for f in during]
        assert Readings not in kinds, kinds
        assert not list(NmeaDecoder().feed(_read(ep.nmea["bus-00000"], 1.5)))
        time.sleep(3.0)  # past the fault's four simulated minutes
        after = list(FrameDecoder().feed(_read(ep.firmware["loop-00000"], 1.5)))
        assert any(isinstance(decode_message(f.msg_type, f.payload), Readings) for f in after)
        assert {s.kind for s in NmeaDecoder().feed(_read(ep.nmea["bus-00000"], 1.5))} >= {"RMC"}
