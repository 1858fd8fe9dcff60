"""The shipped production broker config (deploy/mosquitto/) on a real mosquitto: TLS only
for remote clients, no anonymous access, and a gateway confined to its own topics by the
shipped ACL, while ingest, the API and a real edge agent work end to end through it.

The config file is used as shipped except for its ports, certificate and data paths; the
ACL file is used unmodified.
"""

from __future__ import annotations

import asyncio
import getpass
import re
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from smartcity._localstack import Mosquitto, free_port
from tests.tls_helpers import Pki, make_pki, password_file

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto"
USERS = {"gw-a": "pw-a", "gw-b": "pw-b", "_ingest": "pw-ingest", "_api": "pw-api"}
NOT_AUTHORIZED = 0x87


class ShippedBroker(Mosquitto):
    """mosquitto running deploy/mosquitto/smartcity.conf with test ports and paths."""

    def __init__(self, data_dir: Path, pki: Pki, passwd: Path) -> None:
        super().__init__(data_dir=data_dir)
        self.pki = pki
        self.passwd = passwd
        self.tls_port = free_port()

    def config_text(self) -> str:
        text = (DEPLOY / "smartcity.conf").read_text()
        swaps = {
            "listener 1883 127.0.0.1": f"listener {self.port} 127.0.0.1",
            "listener 8883": f"listener {self.tls_port} 127.0.0.1",
            "/etc/mosquitto/certs/ca.pem": str(self.pki.ca),
            "/etc/mosquitto/certs/broker.pem": str(self.pki.server_cert),
            "/etc/mosquitto/certs/broker.key": str(self.pki.server_key),
            "/etc/mosquitto/smartcity.passwd": str(self.passwd),
            "/etc/mosquitto/smartcity.acl": str(DEPLOY / "smartcity.acl"),
            "/var/lib/mosquitto/": f"{self.data_dir}/",
            "log_dest syslog": f"log_dest file {self.log_path}",
        }
        for old, new in swaps.items():
            assert text.count(old) == 1, old
            text = text.replace(old, new)
        # The test runs as whoever runs it; the packaged broker drops to `mosquitto`.
        return text + f"\nuser {getpass.getuser()}\n"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShippedBroker]:
    d = tmp_path_factory.mktemp("deploy-broker")
    pki = make_pki(d / "pki")
    passwd = password_file(d / "passwd", USERS)
    with ShippedBroker(d / "data", pki, passwd) as b:
        yield b


class Client:
    """A paho MQTT v5 client over the TLS listener that records what the broker answers."""

    def __init__(self, broker: ShippedBroker, user: str | None, password: str | None = None,
                 *, tls: bool = True, will: tuple[str, bytes] | None = None) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"{user or 'anon'}-{uuid.uuid4().hex[:6]}",
                                  protocol=mqtt.MQTTv5)
        if tls:
            ctx = ssl.create_default_context(cafile=str(broker.pki.ca))
            self.client.tls_set_context(ctx)
        if user is not None:
            self.client.username_pw_set(user, password if password is not None else USERS[user])
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.connack: int | None = None
        self.suback: list[int] = []
        self.messages: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        port = broker.tls_port if tls else broker.port
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        with self._cond:
            self.connack = int(rc.value)
            self._cond.notify_all()

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, codes: list[Any], _p: Any) -> None:
        with self._cond:
            self.suback = [int(c.value) for c in codes]
            self._cond.notify_all()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, msg.payload))
            self._cond.notify_all()

    def wait(self, check: Any, timeout: float = 10.0) -> None:
        with self._cond:
            assert self._cond.wait_for(check, timeout), "timed out"

    def connected(self) -> int:
        self.wait(lambda: self.connack is not None)
        assert self.connack is not None
        return self.connack

    def subscribe(self, topic: str) -> list[int]:
        self.suback = []
        self.client.subscribe(topic, qos=1)
        self.wait(lambda: bool(self.suback))
        return self.suback

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """Publish QoS 1; return the PUBACK reason code."""
        codes: list[int] = []
        done = threading.Event()

        def on_publish(_c: Any, _u: Any, _mid: int, rc: Any, _p: Any) -> None:
            codes.append(int(rc.value))
            done.set()

        self.client.on_publish = on_publish
        props = Properties(PacketTypes.PUBLISH)
        self.client.publish(topic, payload, qos=1, retain=retain, properties=props)
        assert done.wait(10), "no PUBACK"
        return codes[0]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_no_anonymous_clients_and_wrong_passwords_are_refused(broker: ShippedBroker) -> None:
    for user, password in ((None, None), ("gw-a", "wrong"), ("nobody", "x")):
        client = Client(broker, user, password)
        try:
            assert client.connected() in (0x86, 0x87, 0x05, 0x04), (user, client.connack)
        finally:
            client.close()
    # A last will on another gateway's status topic would be a forged death notice: the
    # broker accepts the connection but never publishes that will.
    api = Client(broker, "_api")
    forger = Client(broker, "gw-a", will=("sc/v1/gw-b/status", b"forged-death"))
    honest = Client(broker, "gw-a", will=("sc/v1/gw-a/status", b"death"))
    try:
        assert api.connected() == 0
        assert api.subscribe("sc/v1/+/status") == [1]
        assert forger.connected() == 0
        assert honest.connected() == 0
        for client in (forger, honest):  # drop the connections without DISCONNECT
            client.client.loop_stop()
            sock = client.client.socket()
            assert sock is not None
            sock.close()
        api.wait(lambda: ("sc/v1/gw-a/status", b"death") in api.messages)
        time.sleep(0.5)
        assert ("sc/v1/gw-b/status", b"forged-death") not in api.messages
    finally:
        api.close()
    # Plain MQTT listens on loopback only (and authenticates too).
    assert re.search(r"^listener \d+ 127\.0\.0\.1$", broker.config_text(), re.M)


def test_a_gateway_is_confined_to_its_own_topics(broker: ShippedBroker) -> None:
    ingest = Client(broker, "_ingest")
    api = Client(broker, "_api")
    gw_a = Client(broker, "gw-a", will=("sc/v1/gw-a/status", b"offline"))
    gw_b = Client(broker, "gw-b")
    try:
        for client in (ingest, api, gw_a, gw_b):
            assert client.connected() == 0
        assert ingest.subscribe("$share/ingest/sc/v1/+/telemetry") == [1]
        assert gw_a.publish("sc/v1/gw-a/telemetry", b"own") == 0
        ingest.wait(lambda: ("sc/v1/gw-a/telemetry", b"own") in ingest.messages)
        # Speaking for another gateway, or for the platform: refused, never delivered.
        assert gw_a.publish("sc/v1/gw-b/telemetry", b"forged") == NOT_AUTHORIZED
        assert gw_a.publish("sc/v1/_sys/deadletter/ingest", b"x") == NOT_AUTHORIZED
        assert gw_a.publish("sc/v1/gw-a/config/desired", b"{}") == NOT_AUTHORIZED
        # Listening to others: mosquitto grants the subscription, but the read ACL lets
        # nothing through to it; the gateway the message is for gets it.
        for topic in ("sc/v1/gw-b/cmd", "sc/v1/+/telemetry", "sc/#"):
            gw_a.subscribe(topic)
        assert gw_b.subscribe("sc/v1/gw-b/cmd") == [1]
        assert gw_a.subscribe("sc/v1/gw-a/cmd") == [1]
        assert api.publish("sc/v1/gw-b/cmd", b"for-b") == 0
        assert gw_b.publish("sc/v1/gw-b/telemetry", b"from-b") == 0
        assert api.publish("sc/v1/gw-a/cmd", b"for-a") == 0
        gw_b.wait(lambda: ("sc/v1/gw-b/cmd", b"for-b") in gw_b.messages)
        ingest.wait(lambda: ("sc/v1/gw-b/telemetry", b"from-b") in ingest.messages)
        gw_a.wait(lambda: ("sc/v1/gw-a/cmd", b"for-a") in gw_a.messages)
        time.sleep(0.3)
        # (twice: "sc/#" and its own subscription overlap)
        assert set(gw_a.messages) == {("sc/v1/gw-a/cmd", b"for-a")}, gw_a.messages
        # Its own control topics and command responses: allowed.
        assert gw_a.publish("sc/v1/gw-a/cmd/response/ops-1", b"ok") == 0
        assert ("sc/v1/gw-b/telemetry", b"forged") not in ingest.messages
        # Ingest reads telemetry only and writes only its dead letters.
        assert ingest.publish("sc/v1/gw-a/cmd", b"x") == NOT_AUTHORIZED
        assert ingest.publish("sc/v1/_sys/deadletter/ingest", b"dl") == 0
    finally:
        for client in (gw_b, gw_a, api, ingest):
            client.close()


def test_the_api_pushes_config_and_reads_what_gateways_report(broker: ShippedBroker) -> None:
    api = Client(broker, "_api")
    gw_b = Client(broker, "gw-b")
    try:
        assert api.connected() == 0
        assert gw_b.connected() == 0
        for topic in ("sc/v1/+/status", "sc/v1/+/health", "sc/v1/+/config/reported",
                      "sc/v1/+/cmd/response/#"):
            assert api.subscribe(topic) == [1], topic
        assert gw_b.subscribe("sc/v1/gw-b/config/desired") == [1]
        assert api.publish("sc/v1/gw-b/config/desired", b'{"v": 1}', retain=True) == 0
        gw_b.wait(lambda: ("sc/v1/gw-b/config/desired", b'{"v": 1}') in gw_b.messages)
        assert gw_b.publish("sc/v1/gw-b/config/reported", b"applied") == 0
        api.wait(lambda: ("sc/v1/gw-b/config/reported", b"applied") in api.messages)
        assert api.publish("sc/v1/gw-b/config/desired", b"", retain=True) == 0
        assert api.publish("sc/v1/gw-b/telemetry", b"forged") == NOT_AUTHORIZED
    finally:
        gw_b.close()
        api.close()


def test_a_real_edge_agent_reaches_influxdb_through_the_shipped_broker(
    broker: ShippedBroker, influxd: Any, influx_db: str, tmp_path: Path
) -> None:
    from edge_agent import EdgeAgent
    from edge_agent._config import parse_config
    from ingest import InfluxConfig, IngestConfig, MqttConfig, WorkerThread

    cfg = parse_config({
        "gateway": {"id": "gw-a", "state_dir": str(tmp_path / "state")},
        "broker": {"host": "127.0.0.1", "port": broker.tls_port, "topic_root": "sc",
                   "client_id": f"gw-a-{uuid.uuid4().hex[:6]}", "username": "gw-a",
                   "password": USERS["gw-a"], "tls": {"ca_file": str(broker.pki.ca)}},
        "inputs": [{"type": "simulated", "name": "sim", "devices": 2, "device_prefix": "aq",
                    "measurement": "AirQualityObserved", "fields": ["pm25"], "rate_hz": 20}],
        "tick_s": 0.05,
        "batch": {"max_age_s": 0.2},
    }, source="test")
    worker = WorkerThread(IngestConfig(
        mqtt=MqttConfig(host="127.0.0.1", port=broker.tls_port, topic_root="sc",
                        client_id=f"ingest-{uuid.uuid4().hex[:6]}", group="ingest",
                        username="_ingest", password=USERS["_ingest"],
                        tls={"ca_file": str(broker.pki.ca)}),
        influx=InfluxConfig(url=influxd.url, database=influx_db),
    ))

    async def run_agent() -> None:
        agent = EdgeAgent(cfg)
        task = asyncio.create_task(agent.run())
        await asyncio.sleep(3.0)
        agent.stop()
        await task

    with worker:
        asyncio.run(run_agent())
        deadline = time.monotonic() + 20
        count = 0
        while time.monotonic() < deadline:
            answer = influxd.query('SELECT count("pm25") FROM "AirQualityObserved" '
                                   "WHERE \"gateway\" = 'gw-a'", db=influx_db)
            series = answer["results"][0].get("series")
            count = series[0]["values"][0][1] if series else 0
            if count >= 40:
                break
            time.sleep(0.2)
    assert count >= 40


def test_the_shipped_api_and_ingest_settings_load(tmp_path: Path) -> None:
    """deploy/api.yaml and deploy/ingest.yaml validate (the API's with test files standing
    in for its certificates and password file, which must exist)."""
    from api import load_settings
    from ingest._config import load_config as load_ingest

    pki = make_pki(tmp_path / "pki")
    secret = tmp_path / "api.mqtt-password"
    secret.write_text("pw-api\n")
    text = (DEPLOY.parent / "api.yaml").read_text()
    for old, new in {"/etc/smartcity/certs/api.pem": pki.server_cert,
                     "/etc/smartcity/certs/api.key": pki.server_key,
                     "/etc/smartcity/certs/ca.pem": pki.ca,
                     "/etc/smartcity/api.mqtt-password": secret}.items():
        assert text.count(old) == 1, old
        text = text.replace(old, str(new))
    path = tmp_path / "api.yaml"
    path.write_text(text)
    settings = load_settings(path)
    assert settings.mqtt_username == "_api"
    assert settings.mqtt_port == 8883
    assert settings.tls_cert_file == pki.server_cert
    assert not settings.demo
    assert load_ingest(DEPLOY.parent / "ingest.yaml").mqtt.client_id == "ingest-0"
