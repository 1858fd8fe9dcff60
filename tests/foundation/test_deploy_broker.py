"""The shipped production broker (deploy/mosquitto/) on a real mosquitto: TLS only for remote
clients, no anonymous access, users and topic rights in the dynamic-security plugin as
`deploy/mosquitto/provision.sh` creates them, a gateway confined to its own topics, while
ingest, the API and a real edge agent work end to end through it.

The config file is used as shipped except for its ports, certificate and data paths; the
users are made by running the shipped provisioning script against the test's broker.
Hostile gateways: tests/adversarial/.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from smartcity._localstack import Mosquitto, free_port
from tests.tls_helpers import Pki, make_pki

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "mosquitto"
PROVISION = DEPLOY / "provision.sh"
#: One service user per instance, each pinned to its client id (the name without `_`).
SERVICES = {"_ingest-0": "pw-ingest", "_ingest-1": "pw-ingest", "_api-1": "pw-api"}
GATEWAYS = {"gw-a": "pw-a", "gw-b": "pw-b"}
USERS = {**GATEWAYS, **SERVICES}
NOT_AUTHORIZED = 0x87


def gateway_client_id(gateway: str) -> str:
    """The one client id provision.sh lets a gateway use (the edge agent's default)."""
    return f"edge-{gateway}"


class ShippedBroker(Mosquitto):
    """mosquitto running deploy/mosquitto/smartcity.conf with test ports and paths; its
    dynamic-security file is made by ``provision.sh init`` before the first start."""

    def __init__(self, data_dir: Path, pki: Pki) -> None:
        super().__init__(data_dir=data_dir)
        self.pki = pki
        self.tls_port = free_port()
        self.cert_port = free_port()
        self.dynsec_file = self.data_dir / "dynamic-security.json"
        self.admin_options = self.data_dir / "dynsec-admin"

    def config_text(self) -> str:
        text = (DEPLOY / "smartcity.conf").read_text()
        swaps = {  # whole lines
            "listener 1883 127.0.0.1": f"listener {self.port} 127.0.0.1",
            "listener 8883": f"listener {self.tls_port} 127.0.0.1",
            "listener 8884": f"listener {self.cert_port} 127.0.0.1",
            "cafile /etc/mosquitto/certs/ca.pem": f"cafile {self.pki.ca}",
            "cafile /etc/mosquitto/certs/gateway-ca.pem": f"cafile {self.pki.ca}",
            "certfile /etc/mosquitto/certs/broker.pem": f"certfile {self.pki.server_cert}",
            "keyfile /etc/mosquitto/certs/broker.key": f"keyfile {self.pki.server_key}",
            "plugin_opt_config_file /var/lib/mosquitto/dynamic-security.json":
                f"plugin_opt_config_file {self.dynsec_file}",
            "persistence_location /var/lib/mosquitto/": f"persistence_location {self.data_dir}/",
            "log_dest syslog": f"log_dest file {self.log_path}",
        }
        shared = {"certfile /etc/mosquitto/certs/broker.pem",  # both TLS listeners
                  "keyfile /etc/mosquitto/certs/broker.key"}
        for old, new in swaps.items():
            text, n = re.subn(rf"^{re.escape(old)}$", lambda _m, new=new: new, text, flags=re.M)
            assert n == (2 if old in shared else 1), old
        # The test runs as whoever runs it; the packaged broker drops to `mosquitto`.
        return text + f"\nuser {getpass.getuser()}\n"

    def start(self, timeout: float = 30.0) -> None:
        if not self.dynsec_file.exists():
            self.provision("init", str(self.dynsec_file))
        super().start(timeout)

    def provision(self, *args: str, password: str | None = None,
                  check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run deploy/mosquitto/provision.sh against this broker (password on stdin)."""
        env = {**os.environ, "SMARTCITY_DYNSEC_ADMIN": str(self.admin_options),
               "SMARTCITY_BROKER_PORT": str(self.port)}
        done = subprocess.run(
            ["bash", str(PROVISION), *args], input="" if password is None else password + "\n",
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )
        if check:
            assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done

    def provision_users(self, gateways: dict[str, str]) -> None:
        self.provision("add-service", "ingest", "0", "1", password=SERVICES["_ingest-0"])
        self.provision("add-service", "api", password=SERVICES["_api-1"])  # _api-1
        for gateway, password in gateways.items():
            self.provision("add-gateway", gateway, password=password)


def shipped_broker(directory: Path, gateways: dict[str, str]) -> ShippedBroker:
    """A started shipped broker with the services and ``gateways`` provisioned."""
    broker = ShippedBroker(directory / "data", make_pki(directory / "pki"))
    broker.start()
    try:
        broker.provision_users(gateways)
    except BaseException:
        broker.stop()
        raise
    return broker


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShippedBroker]:
    b = shipped_broker(tmp_path_factory.mktemp("deploy-broker"), GATEWAYS)
    yield b
    b.stop()


class Client:
    """A paho MQTT v5 client over the TLS listener that records what the broker answers.

    A user connects with the client id provision.sh pinned it to unless ``client_id`` says
    otherwise: a gateway ``<id>`` as ``edge-<id>``, a service user ``_<x>`` as ``<x>``.
    """

    def __init__(self, broker: ShippedBroker, user: str | None, password: str | None = None,
                 *, tls: bool = True, will: tuple[str, bytes] | None = None,
                 client_id: str | None = None, session_expiry: int = 0,
                 clean_start: bool = True,
                 protocol: int = mqtt.MQTTv5,
                 certificate: tuple[Path, Path] | None = None) -> None:
        if client_id is None:
            client_id = (f"anon-{uuid.uuid4().hex[:6]}" if user is None
                         else user[1:] if user.startswith("_") else gateway_client_id(user))
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=protocol)
        if tls or certificate is not None:
            ctx = ssl.create_default_context(cafile=str(broker.pki.ca))
            if certificate is not None:  # the client-certificate listener
                ctx.load_cert_chain(str(certificate[0]), str(certificate[1]))
            self.client.tls_set_context(ctx)
        if user is not None:
            self.client.username_pw_set(user, password if password is not None else USERS[user])
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.connack: int | None = None
        self.session_present: bool | None = None
        self.disconnects = 0
        self.suback: list[int] = []
        self.messages: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        port = (broker.cert_port if certificate is not None
                else broker.tls_port if tls else broker.port)
        props = None
        if protocol == mqtt.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = session_expiry
            self.client.connect("127.0.0.1", port, clean_start=clean_start, properties=props)
        else:
            self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_connect(self, _c: Any, _u: Any, flags: Any, rc: Any, _p: Any = None) -> None:
        with self._cond:
            self.connack = int(rc.value)
            self.session_present = bool(flags.session_present)
            self._cond.notify_all()

    def _on_disconnect(self, *_args: Any) -> None:
        with self._cond:
            self.disconnects += 1
            self._cond.notify_all()

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, codes: list[Any], _p: Any) -> None:
        with self._cond:
            self.suback = [int(c.value) for c in codes]
            self._cond.notify_all()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, msg.payload))
            self._cond.notify_all()

    def wait(self, check: Callable[[], bool], timeout: float = 10.0) -> None:
        with self._cond:
            assert self._cond.wait_for(check, timeout), "timed out"

    def connected(self) -> int:
        """The first CONNACK's reason code (MQTT 3.1.1: its return code)."""
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

    def drop(self) -> None:
        """Lose the connection without DISCONNECT (a crash, a cut uplink)."""
        self.client.loop_stop()
        sock = self.client.socket()
        assert sock is not None
        sock.close()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        # paho closes its wake-up socket pair only in __del__; a client kept in a reference
        # cycle until the session's last collection would be reported as a ResourceWarning.
        self.client._reset_sockets()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


class IngestProcess:
    """A real ingest worker, ``python -m ingest run``, as the shipped broker's user
    ``_<client_id>`` over TLS (the password in the environment, as deploy/ingest.yaml
    advises)."""

    def __init__(self, broker: ShippedBroker, influx_url: str, database: str, workdir: Path,
                 *, client_id: str = "ingest-0", group: str = "ingest") -> None:
        self.metrics_port = free_port()
        self.username = f"_{client_id}"
        self.config_path = workdir / f"ingest-{client_id}.yaml"
        self.log_path = workdir / f"ingest-{client_id}.log"
        self.config_path.write_text(json.dumps({
            "mqtt": {"host": "127.0.0.1", "port": broker.tls_port, "topic_root": "sc",
                     "client_id": client_id, "group": group, "keepalive": 10,
                     "username": self.username, "tls": {"ca_file": str(broker.pki.ca)}},
            "influx": {"url": influx_url, "database": database},
            "batch": {"max_age": 0.05, "retry": {"initial_delay": 0.1, "max_delay": 1.0}},
            "metrics_host": "127.0.0.1",
            "metrics_port": self.metrics_port,
            "log_level": "INFO",
        }))
        self._proc: subprocess.Popen[bytes] | None = None

    def connected(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2
            ) as resp:
                text: str = resp.read().decode()
        except OSError:
            return False
        return "smartcity_ingest_broker_connected 1.0" in text

    def start(self) -> None:
        env = {**os.environ, "SMARTCITY_INGEST_MQTT__PASSWORD": SERVICES[self.username]}
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "ingest", "run", "--config", str(self.config_path)],
                cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log,
            )
        proc = self._proc
        wait_until(lambda: proc.poll() is not None or self.connected(), 30,
                   "the ingest worker to connect")
        assert proc.poll() is None, self.log_path.read_text()

    def stop(self) -> None:
        """SIGTERM: the worker writes and acks what it holds; its session stays."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> IngestProcess:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def test_no_anonymous_clients_and_wrong_passwords_are_refused(broker: ShippedBroker) -> None:
    for user, password in ((None, None), ("gw-a", "wrong"), ("nobody", "x"), ("_admin", "x")):
        client = Client(broker, user, password)
        try:
            assert client.connected() in (0x86, 0x87), (user, client.connack)
        finally:
            client.close()
    # A last will on another gateway's status topic would be a forged death notice: the
    # broker accepts the connection but never publishes that will.
    api = Client(broker, "_api-1")
    try:
        assert api.connected() == 0
        assert api.subscribe("sc/v1/+/status") == [1]
        forger = Client(broker, "gw-a", will=("sc/v1/gw-b/status", b"forged-death"))
        assert forger.connected() == 0
        forger.drop()
        honest = Client(broker, "gw-a", will=("sc/v1/gw-a/status", b"death"))
        assert honest.connected() == 0
        honest.drop()
        api.wait(lambda: ("sc/v1/gw-a/status", b"death") in api.messages)
        time.sleep(0.5)
        assert ("sc/v1/gw-b/status", b"forged-death") not in api.messages
    finally:
        api.close()
    # Plain MQTT listens on loopback only (and authenticates too).
    assert re.search(r"^listener \d+ 127\.0\.0\.1$", broker.config_text(), re.M)
    plain = Client(broker, None, tls=False)
    try:
        assert plain.connected() == NOT_AUTHORIZED
    finally:
        plain.close()


def test_a_gateway_is_confined_to_its_own_topics(broker: ShippedBroker) -> None:
    ingest = Client(broker, "_ingest-0")
    api = Client(broker, "_api-1")
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
        # Listening to others is refused when subscribing (SUBACK 0x87), not per message.
        for topic in ("sc/v1/gw-b/cmd", "sc/v1/+/telemetry", "sc/#", "#"):
            assert gw_a.subscribe(topic) == [NOT_AUTHORIZED], topic
        assert gw_b.subscribe("sc/v1/gw-b/cmd") == [1]
        assert gw_a.subscribe("sc/v1/gw-a/cmd") == [1]
        assert api.publish("sc/v1/gw-b/cmd", b"for-b") == 0
        assert gw_b.publish("sc/v1/gw-b/telemetry", b"from-b") == 0
        assert api.publish("sc/v1/gw-a/cmd", b"for-a") == 0
        gw_b.wait(lambda: ("sc/v1/gw-b/cmd", b"for-b") in gw_b.messages)
        ingest.wait(lambda: ("sc/v1/gw-b/telemetry", b"from-b") in ingest.messages)
        gw_a.wait(lambda: ("sc/v1/gw-a/cmd", b"for-a") in gw_a.messages)
        time.sleep(0.3)
        assert gw_a.messages == [("sc/v1/gw-a/cmd", b"for-a")], gw_a.messages
        # Its own control topics and command responses: allowed.
        assert api.subscribe("sc/v1/+/cmd/response/#") == [1]
        assert gw_a.publish("sc/v1/gw-a/cmd/response/ops-1", b"ok") == 0
        api.wait(lambda: ("sc/v1/gw-a/cmd/response/ops-1", b"ok") in api.messages)
        assert ("sc/v1/gw-b/telemetry", b"forged") not in ingest.messages
        # Ingest reads telemetry only, through its share group only, and writes only its
        # dead letters.
        for topic in ("sc/v1/+/telemetry", "sc/v1/+/status",
                      "$share/other/sc/v1/+/telemetry"):
            assert ingest.subscribe(topic) == [NOT_AUTHORIZED], topic
        for topic in ("sc/v1/gw-a/cmd", "sc/v1/gw-a/config/desired", "sc/v1/gw-a/telemetry",
                      "sc/v1/gw-a/status"):
            assert ingest.publish(topic, b"x") == NOT_AUTHORIZED, topic
        assert api.subscribe("sc/v1/_sys/#") == [1]
        assert ingest.publish("sc/v1/_sys/deadletter/ingest", b"dl") == 0
        api.wait(lambda: ("sc/v1/_sys/deadletter/ingest", b"dl") in api.messages)
    finally:
        for client in (gw_b, gw_a, api, ingest):
            client.close()


def test_the_api_pushes_config_and_reads_what_gateways_report(broker: ShippedBroker) -> None:
    api = Client(broker, "_api-1")
    gw_b = Client(broker, "gw-b")
    try:
        assert api.connected() == 0
        assert gw_b.connected() == 0
        for topic in ("sc/v1/+/status", "sc/v1/+/health", "sc/v1/+/config/reported",
                      "sc/v1/+/telemetry", "sc/v1/+/cmd/response/#", "sc/v1/_sys/#"):
            assert api.subscribe(topic) == [1], topic
        # The API is no member of ingest's share group either.
        assert api.subscribe("$share/ingest/sc/v1/+/telemetry") == [NOT_AUTHORIZED]
        assert gw_b.subscribe("sc/v1/gw-b/config/desired") == [1]
        assert api.publish("sc/v1/gw-b/config/desired", b'{"v": 1}', retain=True) == 0
        gw_b.wait(lambda: ("sc/v1/gw-b/config/desired", b'{"v": 1}') in gw_b.messages)
        assert gw_b.publish("sc/v1/gw-b/config/reported", b"applied") == 0
        api.wait(lambda: ("sc/v1/gw-b/config/reported", b"applied") in api.messages)
        assert api.publish("sc/v1/gw-b/config/desired", b"", retain=True) == 0
        assert api.publish("sc/v1/gw-b/telemetry", b"forged") == NOT_AUTHORIZED
        assert api.publish("sc/v1/_sys/deadletter/ingest", b"forged") == NOT_AUTHORIZED
    finally:
        gw_b.close()
        api.close()


def test_service_users_connect_only_with_their_own_client_id(broker: ShippedBroker) -> None:
    """Each service user is pinned like a gateway: a leaked `_api-1` password cannot take
    over ingest-0's session (and empty what is queued in it), nor a gateway's; `_ingest-0`
    cannot take ingest-1's or the API's. Refused at CONNECT, before any session is touched."""
    for user, client_id in (("_api-1", "ingest-0"), ("_api-1", "api-2"), ("_api-1", "edge-gw-a"),
                            ("_ingest-0", "ingest-1"), ("_ingest-0", "api-1"),
                            ("_ingest-1", "ingest-0"), ("_ingest-0", "ingest-0x")):
        intruder = Client(broker, user, client_id=client_id)
        try:
            assert intruder.connected() == NOT_AUTHORIZED, (user, client_id)
        finally:
            intruder.close()
    # ingest-0 offline with a message queued in its persistent session: the API user's
    # attempt to connect as ingest-0 leaves the session and the message where they were.
    worker = Client(broker, "_ingest-0", session_expiry=3600)
    gw_a = Client(broker, "gw-a")
    try:
        assert worker.connected() == 0
        assert worker.subscribe("$share/pin/sc/v1/+/telemetry") == [NOT_AUTHORIZED]
        assert worker.subscribe("$share/ingest/sc/v1/gw-a/telemetry") == [NOT_AUTHORIZED]
        assert worker.subscribe("$share/ingest/sc/v1/+/telemetry") == [1]
        worker.close()  # DISCONNECT: the session (expiry 3600 s) stays
        assert gw_a.connected() == 0
        assert gw_a.publish("sc/v1/gw-a/telemetry", b"queued-for-ingest-0") == 0
        hijack = Client(broker, "_api-1", client_id="ingest-0", session_expiry=3600)
        try:
            assert hijack.connected() == NOT_AUTHORIZED
        finally:
            hijack.close()
        back = Client(broker, "_ingest-0", session_expiry=3600, clean_start=False)
        try:
            assert back.connected() == 0
            assert back.session_present
            back.wait(lambda: ("sc/v1/gw-a/telemetry", b"queued-for-ingest-0") in back.messages)
        finally:
            back.close()
    finally:
        gw_a.close()
    for user in ("_api-1", "_ingest-1"):
        own = Client(broker, user)
        try:
            assert own.connected() == 0, user
        finally:
            own.close()
    cleanup = Client(broker, "_ingest-0")  # clean start, expiry 0: the session is gone
    try:
        assert cleanup.connected() == 0
    finally:
        cleanup.close()


def test_provision_refuses_bad_input_and_reports_broker_errors(broker: ShippedBroker) -> None:
    """provision.sh fails loudly (mosquitto_ctrl 2.0.11 itself exits 0 on most errors)."""
    cases = [
        (("add-gateway", "_gw"), "pw", "must match"),        # ids never start with `_`
        (("add-gateway", "a/b"), "pw", "must match"),        # one topic level
        (("add-gateway", "gw+"), "pw", "must match"),
        (("add-gateway", "gw-x", "ingest-0"), "pw", "reserved"),
        (("add-gateway", "gw-x", "api-1"), "pw", "reserved"),
        (("add-gateway", "gw-x"), "", "empty password"),
        (("add-gateway", "gw-a"), "pw", "already exists"),   # no silent overwrite
        (("remove-gateway", "gw-nobody"), None, "not found"),
        (("set-password", "nobody"), "pw", "not found"),
        (("add-service", "ingest"), "pw", "already exists"),  # _ingest-0
        (("add-service", "api", "1"), "pw", "already exists"),
        (("add-service", "ingest", "a/b"), "pw", "must match"),
        (("add-service", "ingest", "-x"), "pw", "must match"),
        (("add-gateway", "ingest-9"), "pw", "reserved"),  # a certificate CN is a client id
        (("add-gateway", "api-2"), "pw", "reserved"),
    ]
    for args, password, message in cases:
        done = broker.provision(*args, password=password, check=False)
        assert done.returncode != 0, args
        assert message in done.stderr, (args, done.stderr)
    done = broker.provision("init", str(broker.dynsec_file), check=False)
    assert done.returncode != 0
    assert "exists" in done.stderr
    # A wrong admin password: mosquitto_ctrl says "Not authorized" and exits 0; we do not.
    wrong = broker.data_dir / "wrong-admin"
    wrong.write_text(re.sub(r"(?m)^-P .*$", "-P wrong", broker.admin_options.read_text()))
    env = {**os.environ, "SMARTCITY_DYNSEC_ADMIN": str(wrong)}
    done = subprocess.run(["bash", str(PROVISION), "remove-gateway", "gw-a"], input="",
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0
    assert "Not authorized" in done.stderr
    # Deny by default: only what a role grants (unsubscribing aside).
    access = json.loads(broker.dynsec_file.read_text())["defaultACLAccess"]
    assert access == {"publishClientSend": False, "publishClientReceive": False,
                      "subscribe": False, "unsubscribe": True}
    assert broker.admin_options.stat().st_mode & 0o077 == 0


def test_a_gateway_is_revoked_and_its_password_changed_at_once(broker: ShippedBroker) -> None:
    broker.provision("add-gateway", "gw-c", password="pw-c")
    gw_c = Client(broker, "gw-c", "pw-c", client_id="edge-gw-c")
    try:
        assert gw_c.connected() == 0
        broker.provision("set-password", "gw-c", password="pw-c2")
        gw_c.wait(lambda: gw_c.disconnects >= 1)  # dropped at once ...
        gw_c.wait(lambda: gw_c.connack == NOT_AUTHORIZED)  # ... and its old password refused
    finally:
        gw_c.close()
    gw_c = Client(broker, "gw-c", "pw-c2", client_id="edge-gw-c")
    try:
        assert gw_c.connected() == 0
        broker.provision("remove-gateway", "gw-c")
        gw_c.wait(lambda: gw_c.disconnects >= 1)
        gw_c.wait(lambda: gw_c.connack == NOT_AUTHORIZED)
    finally:
        gw_c.close()


@pytest.mark.parametrize("login", ["password", "certificate"])
def test_a_real_edge_agent_reaches_influxdb_through_the_shipped_broker(
    broker: ShippedBroker, influxd: Any, influx_db: str, tmp_path: Path, login: str
) -> None:
    """Both as their own processes, configured as the install guides say: the gateway logs
    in with its password, or with its client certificate on the certificate listener."""
    if login == "password":
        password_file = tmp_path / "mqtt-password"
        password_file.write_text(GATEWAYS["gw-a"] + "\n")
        # no client_id: the agent's default, edge-gw-a, is the one provisioned
        access = {"port": broker.tls_port, "username": "gw-a",
                  "password_file": str(password_file), "tls": {"ca_file": str(broker.pki.ca)}}
    else:
        from tests.tls_helpers import issue_client_cert

        cert, key = issue_client_cert(broker.pki, "gw-a")
        access = {"port": broker.cert_port, "tls": {
            "ca_file": str(broker.pki.ca), "cert_file": str(cert), "key_file": str(key)}}
    agent_config = tmp_path / "edge.yaml"
    agent_config.write_text(json.dumps({
        "gateway": {"id": "gw-a", "state_dir": str(tmp_path / "state")},
        "broker": {"host": "127.0.0.1", "topic_root": "sc", **access},
        "inputs": [{"type": "simulated", "name": "sim", "devices": 2, "device_prefix": "aq",
                    "measurement": "AirQualityObserved", "fields": ["pm25"], "rate_hz": 20}],
        "tick_s": 0.05,
        "batch": {"max_age_s": 0.2},
    }))

    def count() -> int:
        answer = influxd.query('SELECT count("pm25") FROM "AirQualityObserved" '
                               "WHERE \"gateway\" = 'gw-a'", db=influx_db)
        series = answer["results"][0].get("series")
        return int(series[0]["values"][0][1]) if series else 0

    with IngestProcess(broker, influxd.url, influx_db, tmp_path, client_id="ingest-1"):
        with (tmp_path / "edge.log").open("ab") as log:
            agent = subprocess.Popen(
                [sys.executable, "-m", "edge_agent", "run", "--config", str(agent_config)],
                cwd=REPO, stdout=subprocess.DEVNULL, stderr=log,
            )
        try:
            wait_until(lambda: count() >= 40 or agent.poll() is not None, 30,
                       "40 readings from the edge agent in InfluxDB")
            assert agent.poll() is None, (tmp_path / "edge.log").read_text()
        finally:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(30)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
    assert count() >= 40


def test_the_shipped_api_and_ingest_settings_load(tmp_path: Path) -> None:
    """deploy/api.yaml and deploy/ingest.yaml validate (the API's with test files standing
    in for its certificates and password file, which must exist)."""
    from api import load_settings

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
    assert settings.mqtt_username == "_api-1"
    assert settings.mqtt_client_id == "api-1"  # the one client id provision.sh pins it to
    assert settings.mqtt_port == 8883
    assert settings.tls_cert_file == pki.server_cert
    assert not settings.demo
    # The API's client id is not a gateway's (gateways connect as edge-<id>).
    assert not settings.mqtt_client_id.startswith("edge-")
    checked = subprocess.run(
        [sys.executable, "-m", "ingest", "check-config", "--config",
         str(DEPLOY.parent / "ingest.yaml")],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )
    assert checked.returncode == 0, checked.stderr
    mqtt_settings = json.loads(checked.stdout)["mqtt"]
    assert mqtt_settings["client_id"] == "ingest-0"
    assert mqtt_settings["group"] == "ingest"  # the share group the ingest role allows
