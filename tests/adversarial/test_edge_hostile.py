"""Hostile local sensors and hostile remote configs against a real edge agent and mosquitto.

Measured on the edge agent before it was hardened:

- on the gateway's local broker, ``{"ts": 1e300}`` raised ``OverflowError`` and deeply nested
  JSON ``RecursionError`` in the MQTT input's parser; the message was never acked, so once
  the input's in-flight window (Receive Maximum 10,000) was full of them the local broker
  sent nothing more and every honest sensor behind it went silent;
- a remote config (``config/desired``: the API's engineer role or its broker user) could point
  an mqtt input at another host with the uplink's ``password_file`` (the password left the
  gateway), set ``spy://...?file=<path>`` as a serial URL (the file was truncated), open
  ``socket://`` or Modbus TCP connections into the cabinet's network, load any ``.yaml`` as a
  register map, and ask for ``simulated.devices`` by the million.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import threading
import urllib.request
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from prometheus_client.parser import text_string_to_metric_families

from edge_agent import EdgeAgent
from smartcity._localstack import Mosquitto, free_port
from telemetry import ConfigDesired, ConfigReported, decode_message, encode_message
from tests.edge_agent.edge_helpers import (
    Central,
    await_until,
    base_config,
    make_config,
    running,
)

pytestmark = pytest.mark.integration

GW = "gw-test"
T0_MS = 1_750_000_000_000


@pytest.fixture
def central(mosquitto: Mosquitto, topic_root: str) -> Iterator[Central]:
    c = Central(mosquitto.port, topic_root, GW, client_id=f"central-{topic_root}")
    yield c
    c.close()


class Listener:
    """A TCP port standing for a host the gateway must never be made to connect to."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1.0)
                try:
                    self.received.append(conn.recv(4096))
                except OSError:
                    self.received.append(b"")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "gateway"))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


# -- hostile payloads on the local broker -----------------------------------------------------

DEEP = b'{"no2": ' + b"[" * 1200 + b"]" * 1200 + b"}"
#: payload -> reason it is refused for
HOSTILE = {
    DEEP: "too_deep",
    b"\xff\xfe\x00garbage": "not_json",
    b"": "not_json",
    b'{"no2": NaN}': "not_json",
    b'{"no2": 1e400}': "not_json",
    b'{"other": 1}': "no_field",
    b'{"no2": "' + b"x" * 5000 + b'"}': "contract",
}


def test_hostile_local_payloads_are_counted_acked_and_every_good_reading_arrives(
    mosquitto: Mosquitto, topic_root: str, tmp_path: Path, central: Central
) -> None:
    """10,050 nested payloads (more than the input's in-flight window), then honest readings
    interleaved with every other hostile kind: every honest reading arrives with its device
    timestamp, a huge device timestamp falls back to the gateway clock, and every refusal is
    acked and counted, per reason, in health and /metrics."""
    port = free_port()
    data = base_config(tmp_path, mosquitto, topic_root, metrics={"port": port})
    data["inputs"] = [
        {
            "type": "mqtt",
            "name": "local",
            "port": mosquitto.port,
            "client_id": f"in-{topic_root}",
            "subscriptions": [
                {
                    "topic": f"{topic_root}/local/+/air",
                    "device": "{2}",
                    "measurement": "AirQualityObserved",
                    "fields": {"no2": "$.no2"},
                    "timestamp": "$.ts",
                    "timestamp_unit": "ms",
                }
            ],
        }
    ]
    agent = EdgeAgent(make_config(data))
    sensors = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"sensors-{topic_root}",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    sensors.max_inflight_messages_set(1000)
    sensors.max_queued_messages_set(0)
    sensors.connect("127.0.0.1", mosquitto.port)
    sensors.loop_start()
    evil, good = f"{topic_root}/local/evil/air", f"{topic_root}/local/s-1/air"
    burst, honest = 10_050, 100

    def publish_all() -> None:
        infos = [sensors.publish(evil, DEEP, qos=1) for _ in range(burst)]
        hostile = list(HOSTILE)
        for i in range(honest):
            infos.append(sensors.publish(good, b'{"no2": %d, "ts": %d}' % (i, T0_MS + i), qos=1))
            infos.append(sensors.publish(evil, hostile[i % len(hostile)], qos=1))
        infos.append(sensors.publish(f"{topic_root}/local/far/air", b'{"no2": 7, "ts": 1e300}',
                                     qos=1))
        for info in infos:
            info.wait_for_publish(60)

    expected: dict[str, int] = {}
    for i in range(honest):
        reason = HOSTILE[list(HOSTILE)[i % len(HOSTILE)]]
        expected[reason] = expected.get(reason, 0) + 1
    expected["too_deep"] += burst
    total = sum(expected.values())

    async def main() -> None:
        async with running(agent):
            await await_until(lambda: agent.snapshot().inputs["local"] == "up", 10, "input up")
            await asyncio.to_thread(publish_all)
            await await_until(
                lambda: sum(d == "s-1" for d, _, _ in central.readings()) == honest,
                90, "every honest reading",
            )
            await await_until(
                lambda: sum(agent.health().dropped.get("input_parse", {}).values()) == total,
                30, "every refusal counted",
            )
            await await_until(lambda: any(d == "far" for d, _, _ in central.readings()), 10)
            health = agent.health()
            assert health.dropped["input_parse"] == {f"local:{evil}": total}
            assert health.links["local"] == "up"
            metrics = await asyncio.to_thread(_scrape, port)
            assert metrics[("edge_stage_dropped_total", (("stage", "input_parse"),))] == total
            for reason, n in expected.items():
                key = ("edge_input_rejected_total", (("input", "local"), ("reason", reason)))
                assert metrics[key] == n, reason

    try:
        asyncio.run(main())
    finally:
        sensors.disconnect()
        sensors.loop_stop()
    assert {ts for d, ts, _ in central.readings() if d == "s-1"} == {
        (T0_MS + i) * 1_000_000 for i in range(honest)
    }
    assert central.values("no2") >= {("s-1", (T0_MS + i) * 1_000_000, i) for i in range(honest)}
    with central.lock:
        far = [r for b in central.batches for r in b.readings if r.device == "far"]
    assert [(r.clock, r.fields) for r in far] == [("gateway", {"no2": 7})]


# -- hostile remote configs -------------------------------------------------------------------


def test_remote_config_cannot_reach_credentials_hosts_serial_urls_or_map_files(
    mosquitto: Mosquitto, topic_root: str, tmp_path: Path, central: Central
) -> None:
    """Each measured attack, sent as ``config/desired`` through the broker to a running
    agent, is refused with its reasons on ``config/reported``; nothing connects to the
    attacker's port, the canary file is untouched, and a remote config that changes only
    what may change (processors, a subscription, batching) is still applied."""
    password_file = tmp_path / "uplink-password"
    password_file.write_text("s3cret-uplink\n")
    canary = tmp_path / "canary"
    canary.write_text("spool bytes\n")
    secret_map = tmp_path / "secret.yaml"
    secret_map.write_text("api_token: hunter2\n")
    map_copy = tmp_path / "copied-map.yaml"
    shipped = resources.files("firmware_bridge").joinpath("maps", "eastron-sdm630.yaml")
    with resources.as_file(shipped) as src:
        shutil.copy(src, map_copy)
    data = base_config(tmp_path, mosquitto, topic_root)
    data["broker"] |= {"username": GW, "password_file": str(password_file)}
    local = {
        "type": "mqtt",
        "name": "local",
        "port": mosquitto.port,
        "client_id": f"in-{topic_root}",
        "subscriptions": [
            {"topic": f"{topic_root}/local/+/air", "device": "{2}",
             "measurement": "AirQualityObserved", "fields": {"no2": "$.no2"}}
        ],
    }
    data["inputs"] = [local]
    agent = EdgeAgent(make_config(data))
    attacker = Listener()
    desired = agent.topics.config_desired(GW)
    reported = agent.topics.config_reported(GW)

    def reports() -> dict[int, ConfigReported]:
        return {
            r.version: r
            for r in (decode_message(p, ConfigReported) for p in central.on(reported))
        }

    def with_inputs(*inputs: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return dict(data, inputs=list(inputs), **extra)

    steal = dict(local, port=attacker.port, allow_insecure=True, username=GW,
                 password_file=str(password_file))
    attacks: dict[str, tuple[dict[str, Any], list[str]]] = {
        "mqtt input to another host with the uplink's password": (
            with_inputs(steal),
            ["inputs[0].port:", "inputs[0].username:", "inputs[0].password_file:",
             "inputs[0].allow_insecure:"],
        ),
        "new mqtt input with the uplink's password": (
            with_inputs(local, dict(steal, name="extra", client_id=None)),
            ["inputs[1]: cannot be changed remotely"],
        ),
        "spy:// serial URL writing a file": (
            with_inputs(local, {"type": "firmware", "name": "fw",
                                "serial": {"url": f"spy://loop://?file={canary}"}}),
            ["inputs[1].serial.url: cannot be changed remotely"],
        ),
        "socket:// into the cabinet network": (
            with_inputs(local, {"type": "nmea", "name": "gps", "device": "bus-1",
                                "serial": {"url": f"socket://127.0.0.1:{attacker.port}"}}),
            ["inputs[1].serial.url: cannot be changed remotely"],
        ),
        "a local file as register map": (
            with_inputs(local, {"type": "modbus", "name": "m", "device": "meter-1",
                                "tcp": {"host": "127.0.0.1", "port": attacker.port},
                                "register_map": str(secret_map)}),
            ["inputs[1].register_map: cannot be changed remotely"],
        ),
        "a valid map file": (
            with_inputs(local, {"type": "modbus", "name": "m", "device": "meter-1",
                                "tcp": {"host": "127.0.0.1", "port": attacker.port},
                                "register_map": str(map_copy)}),
            ["inputs[1].register_map: cannot be changed remotely"],
        ),
        "a Modbus TCP target in the cabinet network": (
            with_inputs(local, {"type": "modbus", "name": "m", "device": "meter-1",
                                "tcp": {"host": "127.0.0.1", "port": attacker.port},
                                "register_map": "eastron-sdm630"}),
            ["inputs[1].tcp: cannot be changed remotely"],
        ),
        "a simulation bigger than the gateway": (
            with_inputs(local, {"type": "simulated", "name": "sim", "devices": 20_000}),
            ["inputs[1].devices: Input should be less than or equal to 10000"],
        ),
        "the uplink's credentials": (
            dict(data, broker=dict(data["broker"], password_file=str(canary))),
            ["broker: cannot be changed remotely"],
        ),
    }

    async def main() -> None:
        async with running(agent):
            await await_until(lambda: agent.uplink.connected, 10)
            for version, (name, (config, reasons)) in enumerate(attacks.items(), start=2):
                payload = encode_message(ConfigDesired(version=version, config=config))
                await asyncio.to_thread(central.publish, desired, payload, retain=True)
                await await_until(lambda v=version: v in reports(), 10, f"report on {name}")
                rep = reports()[version]
                assert (rep.status, rep.running_version) == ("rejected", 0), name
                for reason in reasons:
                    assert reason in (rep.reason or ""), (name, rep.reason)
                assert "hunter2" not in (rep.reason or "")
            # what a remote config may change is still applied
            allowed = with_inputs(
                dict(local, subscriptions=[dict(local["subscriptions"][0], measurement="Air")]),
                processors=[{"stages": [{"type": "validity", "max": 500}]}],
                batch={"max_readings": 50, "max_age_s": 0.2},
            )
            payload = encode_message(ConfigDesired(version=100, config=allowed))
            await asyncio.to_thread(central.publish, desired, payload, retain=True)
            await await_until(lambda: agent.config_version == 100, 10, "allowed config applied")
            await asyncio.sleep(1.0)  # time for any connection the attacks could have opened
        await asyncio.to_thread(central.publish, desired, b"", retain=True)

    try:
        asyncio.run(main())
    finally:
        attacker.close()
    assert reports()[100].status == "applied"
    assert attacker.received == []
    assert canary.read_text() == "spool bytes\n"


def test_a_sensor_inventing_topics_cannot_grow_processor_state_without_bound(
    mosquitto: Mosquitto, topic_root: str, tmp_path: Path, central: Central
) -> None:
    """Device names come from the topic (``{2}``): a local sensor publishing under ever new
    topics made a processor channel each (state arrays, checkpoint layout) without bound.
    Past processors_max_channels new channels pass through unprocessed: none is lost, the
    state stays bounded, and the overflow is counted."""
    limit, devices = 40, 200
    data = base_config(tmp_path, mosquitto, topic_root)
    data["processors_max_channels"] = limit
    data["processors"] = [{"stages": [{"type": "scale", "gain": 2.0}]}]
    data["inputs"] = [{
        "type": "mqtt", "name": "local", "port": mosquitto.port,
        "client_id": f"in-{topic_root}",
        "subscriptions": [{
            "topic": f"{topic_root}/local/+/air", "device": "{2}",
            "measurement": "AirQualityObserved", "fields": {"no2": "$.no2"},
        }],
    }]
    agent = EdgeAgent(make_config(data))
    sensors = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sensors-{topic_root}",
                          protocol=MQTTProtocolVersion.MQTTv5)
    sensors.connect("127.0.0.1", mosquitto.port)
    sensors.loop_start()

    def publish_all() -> None:
        infos = [sensors.publish(f"{topic_root}/local/s-{i}/air", b'{"no2": 1}', qos=1)
                 for i in range(devices)]
        for info in infos:
            info.wait_for_publish(30)

    async def main() -> None:
        async with running(agent):
            await await_until(lambda: agent.snapshot().inputs["local"] == "up", 10, "input up")
            await asyncio.to_thread(publish_all)
            await await_until(lambda: len({d for d, _, _ in central.readings()}) == devices,
                              60, "a reading of every device")
            assert agent.pipeline.channels == limit
            dropped = agent.health().dropped["channel_limit"]
            assert sum(dropped.values()) == devices - limit

    try:
        asyncio.run(main())
    finally:
        sensors.disconnect()
        sensors.loop_stop()
    values = central.values("no2")
    assert len(values) == devices
    assert sorted(v for _, _, v in values).count(2.0) == limit  # processed: scaled
    assert sorted(v for _, _, v in values).count(1) == devices - limit  # passed as sent
