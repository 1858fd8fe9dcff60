"""Injected faults seen downstream: a simulated spike on a loop detector's serial line is
rejected by a real edge agent's Hampel filter, counted in its health, and never reaches the
central broker."""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import sim_helpers as h
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from simulators import DeviceCity
from smartcity._localstack import Mosquitto
from telemetry import Health, TopicKind, Topics, decode_batch, decode_message

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SPEED = 60  # simulated seconds per wall second: one city step (60 s) per second
FAULT_AT_WALL_S = 15  # after the Hampel window has filled


def test_a_simulated_spike_is_rejected_by_the_edge_agent(
    tmp_path: Path, mosquitto: Mosquitto, topic_root: str
) -> None:
    scenario = h.scenario(
        speed=SPEED,
        devices={"firmware": 1, "nmea": 0, "modbus_meters": 0, "mqtt_sensors": 0,
                 "sample_interval_s": 1.0},
        faults=[{"type": "spike", "at_s": FAULT_AT_WALL_S * SPEED, "devices": ["loop-00000"],
                 "field": "averageVehicleSpeed", "factor": 3.0, "probability": 0.3}],
    )  # fmt: skip
    topics = Topics(topic_root)
    speeds: dict[str, list[tuple[int, float]]] = defaultdict(list)
    hampel_dropped: list[int] = []
    lock = threading.Lock()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        _gw, kind = topics.parse(msg.topic)
        with lock:
            if kind is TopicKind.TELEMETRY:
                for r in decode_batch(msg.payload).readings:
                    if "averageVehicleSpeed" in r.fields:
                        speeds[r.tags.get("lane", "")].append(
                            (r.ts, float(r.fields["averageVehicleSpeed"]))
                        )
            elif kind is TopicKind.HEALTH:
                health = decode_message(msg.payload, Health)
                hampel_dropped.append(sum(health.dropped.get("hampel", {}).values()))

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sub.on_message = on_message
    sub.connect(mosquitto.host, mosquitto.port)
    sub.subscribe(f"{topic_root}/v1/+/#", qos=1)
    sub.loop_start()
    agent: subprocess.Popen[bytes] | None = None
    try:
        with DeviceCity(scenario, directory=tmp_path / "dev") as city:
            [(device, pty)] = city.endpoints.firmware.items()
            config = {
                "gateway": {"id": "gw-spike", "state_dir": str(tmp_path / "state")},
                "broker": {"host": mosquitto.host, "port": mosquitto.port,
                           "topic_root": topic_root, "client_id": f"edge-{topic_root}"},
                "batch": {"max_readings": 50, "max_age_s": 0.5},
                "health": {"interval_s": 2},
                "inputs": [{"type": "firmware", "name": "fw", "serial": {"url": pty},
                            "device_names": {0x0A00: device}}],
                "processors": [{
                    "match": {"field": "averageVehicleSpeed"},
                    "stages": [{"type": "validity", "min": 0, "max": 250},
                               {"type": "hampel", "window": 9, "k": 3.0,
                                "min_deviation": 2.0}],
                }],
            }  # fmt: skip
            path = tmp_path / "edge.yaml"
            path.write_text(yaml.safe_dump(config))
            with (tmp_path / "agent.log").open("wb") as log:
                agent = subprocess.Popen(
                    [sys.executable, "-m", "edge_agent", "run", "--config", str(path)],
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                time.sleep(1)
                with lock:
                    if hampel_dropped and hampel_dropped[-1] >= 3:
                        break
        agent.terminate()
        assert agent.wait(20) == 0
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
            agent.wait()
        sub.disconnect()
        sub.loop_stop()
    with lock:
        assert hampel_dropped, "no health message from the agent"
        assert hampel_dropped[-1] >= 3, (tmp_path / "agent.log").read_text()[-2000:]
        assert speeds, "no speed reached the central broker"
        for lane, series in speeds.items():
            values = [v for _, v in sorted(series)]
            typical = statistics.median(values)
            # A spike triples the speed; what passed the agent stays near the lane's level.
            assert max(values) < 2.0 * typical, (lane, typical, sorted(values)[-5:])
