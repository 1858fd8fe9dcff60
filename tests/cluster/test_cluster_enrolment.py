"""Gateway enrolment in the cluster profile, against a real 3-node NATS cluster::

    engineer key ─▶ API (enrolment.nats) ─ put/delete ─▶ KV bucket (R3)
                                                           │ each node's users-sync
    edge enroll (token) ◀── user, password, hosts ──┘      ▼ renders + SIGHUP
    paho (MQTT 3.1.1, the gateway's credentials) ─▶ nats-0/1/2 ─▶ $MQTT_msgs

No mocks: the syncs are `smartcity nats users-sync` processes, one per node, each reloading
its own nats-server; revocation is checked on live and new connections on every node, and
its retained death (``reason: "revoked"``, published by the API) is what a subscriber on
another node reads from the gateway's status topic.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import paho.mqtt.client as mqtt
import pytest
import yaml
from cluster_kit import ClusterFactory, password
from nats.js.api import AckPolicy, ConsumerConfig
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from api import ApiServer, ApiSettings
from edge_agent._enroll import EnrollError, enroll
from smartcity._localstack import Influxd
from smartcity._localstack_nats import NatsCluster, NatsUser
from telemetry import Batch, Birth, Death, Reading, decode_status, encode_batch, encode_message

pytestmark = pytest.mark.integration

DURABLE = "enrol-test"


def _until(check: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            pytest.fail(f"not within {timeout}s: {what}")
        time.sleep(0.05)
    return time.monotonic() - start


class Gateway:
    """One MQTT 3.1.1 connection with a gateway's credentials (paho, its own loop thread)."""

    def __init__(self, host: str, port: int, user: str, pw: str, client_id: str) -> None:
        self.rc: str | None = None
        self.dropped = False
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv311
        )
        self.client.username_pw_set(user, pw)
        self.client.on_connect = lambda _c, _u, _f, rc, _p: setattr(self, "rc", str(rc))
        self.client.on_disconnect = lambda *_a: setattr(self, "dropped", True)
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        _until(lambda: self.rc is not None or self.dropped, 10, "CONNACK")

    @property
    def accepted(self) -> bool:
        return self.rc == "Success" and not self.dropped

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _retained(host: str, port: int, user: str, pw: str, topic: str) -> bytes | None:
    """The message retained on ``topic``, read by a fresh subscriber (None: none within 3 s)."""
    got: list[bytes] = []
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"retained-{time.monotonic_ns()}",
        protocol=MQTTProtocolVersion.MQTTv311,
    )  # fmt: skip
    client.username_pw_set(user, pw)
    client.on_message = lambda _c, _u, msg: got.append(bytes(msg.payload)) if msg.retain else None
    client.on_connect = lambda c, _u, _f, _rc, _p: c.subscribe(topic, qos=1)
    client.connect(host, port, keepalive=30)
    client.loop_start()
    try:
        deadline = time.monotonic() + 3
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        client.loop_stop()
        client.disconnect()
    return got[0] if got else None


def _connects(cluster: NatsCluster, user: str, pw: str) -> list[bool]:
    """Whether a fresh connection with these credentials is accepted, node by node."""
    out = []
    for n in cluster.nodes:
        g = Gateway(n.host, n.mqtt_port, user, pw, f"probe-{user}-{n.index}")
        out.append(g.accepted)
        g.close()
    return out


async def _consumer(cluster: NatsCluster, *, create: bool = False) -> list[str]:
    """Create the durable consumer (before any gateway publishes: interest retention), or
    fetch and ack what it holds; the subjects."""
    nc = await nats.connect(cluster.urls, user=cluster.admin.name, password=cluster.admin.password)
    try:
        js = nc.jetstream()
        if create:
            await js.add_consumer(
                "$MQTT_msgs",
                ConsumerConfig(
                    durable_name=DURABLE,
                    ack_policy=AckPolicy.EXPLICIT,
                    filter_subject="$MQTT.msgs.sc.v1.*.telemetry",
                ),
            )
            return []
        sub = await js.pull_subscribe_bind(DURABLE, stream="$MQTT_msgs")
        subjects = []
        try:
            for m in await sub.fetch(100, timeout=2):
                subjects.append(m.subject)
                await m.ack()
        except nats.errors.TimeoutError:
            pass
        return subjects
    finally:
        await nc.close()


@pytest.fixture
def syncs(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _batch(gw: str) -> bytes:
    ts = time.time_ns()
    reading = Reading(device="aq-0", measurement="AirQualityObserved", ts=ts, fields={"pm25": 4.0})
    return encode_batch(Batch(gateway=gw, seq=0, readings=[reading]))


def test_enrol_publish_confine_and_revoke_on_every_node(
    nats_cluster_factory: ClusterFactory,
    syncs: list[subprocess.Popen[bytes]],
    influxd: Influxd,
    influx_db: str,
    tmp_path: Path,
) -> None:
    api_user = NatsUser(name="api", password=password(), role="service")
    sync_user = NatsUser(name="users-sync", password=password(), role="service")
    cluster = nats_cluster_factory([api_user, sync_user], users_sync=True)
    sync_pw = tmp_path / "sync.password"
    sync_pw.write_text(sync_user.password + "\n")
    for node in cluster.nodes:
        with (tmp_path / f"sync-{node.index}.log").open("wb") as log:
            syncs.append(
                subprocess.Popen(
                    node.users_sync_argv(
                        username=sync_user.name, password_file=sync_pw, interval_s=0.2
                    ),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    asyncio.run(_consumer(cluster, create=True))
    time.sleep(0.5)
    assert [p.poll() for p in syncs] == [None] * 3, (tmp_path / "sync-0.log").read_text()

    first, *others = cluster.mqtt_hosts
    host, port = first.rsplit(":", 1)
    mqtt_block = {
        "host": host,
        "port": int(port),
        "hosts": others,
        "protocol": "mqtt311",
        "username": api_user.name,
        "password": api_user.password,
        "client_id": "api-1",
    }
    enrolment = {
        "nats": {
            "servers": cluster.urls,
            "username": api_user.name,
            "password": api_user.password,
            "timeout_s": 10,
        }
    }
    settings = ApiSettings(
        demo=True,
        port=0,
        topic_root="sc",
        influx_url=influxd.url,
        influx_database=influx_db,
        database_url=f"sqlite:///{tmp_path}/api.sqlite3",
        gap_repair=False,
        mqtt=mqtt_block,  # type: ignore[arg-type]
        enrolment=enrolment,  # type: ignore[arg-type]
    )
    with ApiServer(settings) as api:
        engineer = {"X-API-Key": api.services.demo_keys["engineer"]}
        admin = {"X-API-Key": api.services.demo_keys["admin"]}

        def call(method: str, path: str, **kw: Any) -> httpx.Response:
            return httpx.request(method, f"{api.url}{path}", timeout=30, **kw)

        # A gateway id the cluster's subjects would rewrite is refused at registration.
        bad = call("POST", "/v1/gateways/cab.17/enrolment", headers=engineer)
        assert bad.status_code == 400, bad.text

        creds: dict[str, dict[str, Any]] = {}
        tokens: dict[str, str] = {}
        for gw in ("gw-a", "gw-b"):
            r = call("POST", f"/v1/gateways/{gw}/enrolment", headers=engineer)
            assert r.status_code == 201, r.text
            tokens[gw] = r.json()["token"]
            done = enroll(api.url, tokens[gw], tmp_path / gw)
            assert done.client_id == f"edge-{gw}"
            block = yaml.safe_load(done.broker_yaml.read_text())["broker"]
            assert block["protocol"] == "mqtt311"
            assert [f"{block['host']}:{block['port']}", *block["hosts"]] == cluster.mqtt_hosts
            assert done.password_file.stat().st_mode & 0o777 == 0o600
            creds[gw] = {**block, "password": done.password_file.read_text().strip()}

        # The token works once.
        with pytest.raises(EnrollError, match="used"):
            enroll(api.url, tokens["gw-a"], tmp_path / "again")

        # Every node's sync renders both users, and every node accepts them.
        a, b = creds["gw-a"], creds["gw-b"]
        waited = _until(
            lambda: all('"gw-b"' in n.users_path.read_text() for n in cluster.nodes),
            10,
            "gw-b rendered everywhere",
        )
        print(f"last enrolment rendered on all 3 nodes {waited:.2f} s after its answer")
        _until(
            lambda: all(_connects(cluster, "gw-a", a["password"])),
            10,
            "gw-a accepted on every node",
        )
        assert _connects(cluster, "gw-a", "not-" + a["password"]) == [False] * 3
        for n in cluster.nodes:  # plain passwords are nowhere on the nodes, hashes only
            text = n.users_path.read_text()
            assert a["password"] not in text
            assert '"gw-a"' in text
            assert "$2b$04$" in text

        # Telemetry through node 1 reaches the stream; another gateway's subjects do not.
        node = cluster.nodes[1]
        gw_a = Gateway(node.host, node.mqtt_port, "gw-a", a["password"], a["client_id"])
        gw_b = Gateway(
            cluster.nodes[2].host, cluster.nodes[2].mqtt_port, "gw-b", b["password"], b["client_id"]
        )
        try:
            assert gw_a.accepted
            assert gw_b.accepted
            gw_a.publish("sc/v1/gw-b/telemetry", _batch("gw-b"))  # PUBACKed, dropped
            gw_a.publish("sc/v1/gw-a/telemetry", _batch("gw-a"))
            assert asyncio.run(_consumer(cluster)) == ["$MQTT.msgs.sc.v1.gw-a.telemetry"]
            for gw, client in (("gw-a", gw_a), ("gw-b", gw_b)):
                birth = encode_message(Birth(gw=gw, ts=time.time_ns(), agent="test"))
                client.client.publish(f"sc/v1/{gw}/status", birth, qos=1, retain=True)
            forged = encode_message(Death(gw="gw-b", ts=time.time_ns(), reason="revoked"))
            gw_a.client.publish("sc/v1/gw-b/status", forged, qos=1, retain=True)  # dropped

            # Revoke: the API says revoked, the live connection is closed, new ones refused.
            t0 = time.monotonic()
            r = call("DELETE", "/v1/gateways/gw-a/enrolment", headers=engineer)
            assert r.status_code == 200, r.text
            assert r.json()["state"] == "revoked"
            closed = _until(lambda: gw_a.dropped, 10, "gw-a's live connection closed")
            print(
                f"live connection closed {closed:.2f} s after the revoke answered "
                f"({time.monotonic() - t0:.2f} s after the DELETE)"
            )
            _until(
                lambda: _connects(cluster, "gw-a", a["password"]) == [False] * 3,
                10,
                "gw-a refused on every node",
            )
            # every node holds the API's retained death; gw-b's birth is untouched
            far = cluster.nodes[2]
            status = _retained(far.host, far.mqtt_port, api_user.name, api_user.password,
                               "sc/v1/gw-a/status")  # fmt: skip
            assert status is not None
            death = decode_status(status)
            assert isinstance(death, Death)
            assert (death.gw, death.reason) == ("gw-a", "revoked")
            other = _retained(far.host, far.mqtt_port, api_user.name, api_user.password,
                              "sc/v1/gw-b/status")  # fmt: skip
            assert other is not None
            assert isinstance(decode_status(other), Birth)
            time.sleep(0.5)
            assert gw_b.accepted, "another gateway's connection survives the reload"
            gw_b.publish("sc/v1/gw-b/telemetry", _batch("gw-b"))
            assert asyncio.run(_consumer(cluster)) == ["$MQTT.msgs.sc.v1.gw-b.telemetry"]
        finally:
            gw_a.close()
            gw_b.close()

        shown = call("GET", "/v1/gateways/gw-a/enrolment", headers=engineer).json()
        assert shown["state"] == "revoked"
        assert shown["revoked_at"]
        with pytest.raises(EnrollError, match="revoked"):
            enroll(api.url, tokens["gw-a"], tmp_path / "late")
        items = call("GET", "/v1/audit", headers=admin, params={"gateway": "gw-a"}).json()
        assert [(e["action"], e["result"]) for e in reversed(items["items"])] == [
            ("gateway.register", "ok"),
            ("gateway.enroll", "ok"),
            ("gateway.enroll", "refused: token used"),
            ("gateway.revoke", "ok"),
            ("gateway.enroll", "refused: token revoked"),
        ]
    for p in syncs:
        assert p.poll() is None, "a sync died"
    logs = [
        json.loads(line)
        for p in (tmp_path / "sync-0.log",)
        for line in p.read_text().splitlines()
        if line.startswith("{")
    ]
    assert [e["gateways"] for e in logs if e["event"] == "gateway users rendered"][-1] == 1


def test_the_sync_renders_valid_entries_only_with_rights_from_the_id() -> None:
    from smartcity._nats_users import _hash_of, render_users

    good = "$2b$04$" + "a" * 53
    assert _hash_of("gw-1", json.dumps({"bcrypt": good}).encode()) == good
    hostile: list[tuple[str, bytes | None]] = [
        ("gw.1", json.dumps({"bcrypt": good}).encode()),  # would become gw//1 in subjects
        ("gw-1", b"not json"),
        ("gw-1", None),
        ("gw-1", json.dumps(["bcrypt", good]).encode()),
        ("gw-1", json.dumps({"bcrypt": "plain-password"}).encode()),
        ("gw-1", json.dumps({"bcrypt": good + '"}, {user: x'}).encode()),  # config injection
    ]
    for key, value in hostile:
        with pytest.raises(ValueError, match=r"gateway id|JSON|bcrypt"):
            _hash_of(key, value)
    text = render_users('{user: "svc", password: "pw"}\n', {"gw-1": good}, topic_root="sc")
    entry = next(line for line in text.splitlines() if '"gw-1"' in line)
    assert 'allowed_connection_types: ["MQTT"]' in entry
    assert '"allow": ["sc.v1.gw-1.>"]' in entry
    assert '"deny": ["sc.v1.gw-1.cmd", "sc.v1.gw-1.config.desired"]' in entry
