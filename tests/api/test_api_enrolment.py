"""Gateway provisioning end to end on the shipped broker (deploy/mosquitto, dynamic security):
an engineer registers a gateway, `smartcity edge enroll` redeems the one-time token for the
gateway's own broker user, a real edge agent runs with it, a revocation drops it at once and
its credentials are refused from then on. Every step leaves one audit entry.

A revocation on one API replica reaches the others through the retained death it publishes
on the gateway's status topic (two APIs on one broker: the other shows it offline within a
second, and so does a replica started afterwards; the gateway's birth after it is enrolled
again replaces it). provision.sh update-roles grants that to an API role an older
provision.sh made."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from api_helpers import ApiStack, start_stack, wait_until
from websockets.sync.client import connect

from smartcity._localstack import Influxd
from telemetry import Birth, Death, encode_message
from tests.foundation.test_deploy_broker import NOT_AUTHORIZED, Client, ShippedBroker

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShippedBroker]:
    from tests.tls_helpers import make_pki

    directory = tmp_path_factory.mktemp("enrol-broker")
    b = ShippedBroker(directory / "data", make_pki(directory / "pki"))
    b.start()
    try:
        # _api-1 and _api-2 (client ids api-1, api-2): two replicas of the API
        b.provision("add-service", "api", "1", "2", password="pw-api")
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="module")
def stack(
    broker: ShippedBroker, influxd: Influxd, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiStack]:
    database = f"enrol_{uuid.uuid4().hex[:8]}"
    influxd.create_database(database)
    s = start_stack(
        broker,
        influxd,
        root="sc",
        database=database,
        db_path=tmp_path_factory.mktemp("enroldb") / "api.sqlite3",
        mqtt={"username": "_api-1", "password": "pw-api", "client_id": "api-1"},  # pinned
        enrolment={
            "dynsec": {"options_file": str(broker.admin_options)},
            "broker_host": "127.0.0.1",
            "broker_port": broker.tls_port,
            "broker_ca_file": str(broker.pki.ca),
            "rate_per_min": 60,  # the module enrols more than the default 10 a minute
        },
    )
    try:
        yield s
    finally:
        s.close()
        influxd.drop_database(database)


def edge_enroll(stack: ApiStack, token: str, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "smartcity",
            "edge",
            "enroll",
            "--api",
            stack.url,
            "--token",
            token,
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def audit(stack: ApiStack, gateway: str) -> list[tuple[str, str]]:
    items = stack.get("/v1/audit", "admin", params={"gateway": gateway}).json()["items"]
    return [(e["action"], e["result"]) for e in reversed(items)]


def last_seen(stack: ApiStack, gateway: str) -> Any:
    return stack.get(f"/v1/gateways/{gateway}").json().get("last_seen")


def state(stack: ApiStack, gateway: str) -> Any:
    return stack.get(f"/v1/gateways/{gateway}/enrolment").json()["state"]


def test_enrol_run_revoke_and_the_revoked_gateway_is_refused(
    stack: ApiStack, broker: ShippedBroker, tmp_path: Path
) -> None:
    gw = "gw-enrol"
    engineer = stack.client("engineer")
    assert stack.client("operator").post(f"/v1/gateways/{gw}/enrolment").status_code == 403
    resp = engineer.post(f"/v1/gateways/{gw}/enrolment")
    assert resp.status_code == 201, resp.text
    token = resp.json()["token"]
    assert token.startswith("sce_")
    assert state(stack, gw) == "pending"

    # the gateway redeems it with the real CLI
    out = tmp_path / "etc"
    done = edge_enroll(stack, token, out)
    assert done.returncode == 0, done.stderr
    assert "next:" in done.stdout
    assert token not in done.stdout
    password_file = out / "broker-password"
    assert password_file.stat().st_mode & 0o777 == 0o600
    assert (out / "broker-ca.pem").read_text() == broker.pki.ca.read_text()
    assert state(stack, gw) == "enrolled"
    # a token works once
    again = edge_enroll(stack, token, tmp_path / "again")
    assert again.returncode == 1, again.stderr
    assert "used" in again.stderr, again.stderr
    assert not (tmp_path / "again" / "broker-password").exists()
    assert engineer.post(f"/v1/gateways/{gw}/enrolment").status_code == 409

    # a real edge agent with what enroll wrote, on the TLS listener requiring credentials
    block = yaml.safe_load((out / "broker.yaml").read_text())["broker"]
    assert block["client_id"] == f"edge-{gw}"
    assert block["username"] == gw
    config = tmp_path / "edge.yaml"
    config.write_text(
        json.dumps(
            {
                "gateway": {"id": gw, "state_dir": str(tmp_path / "state")},
                "broker": {**block, "backoff_initial_s": 0.2, "backoff_max_s": 0.5},
                "inputs": [
                    {
                        "type": "simulated",
                        "name": "sim",
                        "devices": 1,
                        "device_prefix": "aq",
                        "measurement": "AirQualityObserved",
                        "fields": ["pm25"],
                        "rate_hz": 5,
                    }
                ],
                "tick_s": 0.1,
                "batch": {"max_age_s": 0.2},
            }
        )
    )
    log = tmp_path / "edge.log"
    with log.open("ab") as sink:
        agent = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "run", "--config", str(config)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    try:
        wait_until(
            lambda: (
                stack.get(f"/v1/gateways/{gw}").json().get("state") == "online"
                or agent.poll() is not None
            ),
            30,
        )
        assert agent.poll() is None, log.read_text()

        wait_until(lambda: last_seen(stack, gw) is not None, 10)
        # revoke: the broker drops it at once (the plugin kicks it without its will) and
        # refuses every reconnect: nothing of it arrives any more
        stream = stack.url.replace("http://", "ws://") + "/v1/stream/ws?kind=gateway"
        with connect(stream, additional_headers={"X-API-Key": stack.keys["viewer"]}) as ws:
            assert json.loads(ws.recv(timeout=5))["type"] == "hello"
            resp = engineer.delete(f"/v1/gateways/{gw}/enrolment")
            assert resp.status_code == 200, resp.text
            # no will comes: the revocation itself takes it offline, pushed at once
            event = json.loads(ws.recv(timeout=5))
            while event["type"] == "heartbeat":
                event = json.loads(ws.recv(timeout=5))
        assert (event["type"], event.get("gateway"), event.get("state")) == (
            "gateway",
            gw,
            "offline",
        )
        assert resp.json()["state"] == "revoked"
        assert state(stack, gw) == "revoked"
        shown = stack.get(f"/v1/gateways/{gw}").json()
        assert (shown["state"], shown["online"], shown["reason"], shown["enrolment"]) == (
            "offline",
            False,
            "revoked",
            "revoked",
        )
        time.sleep(1.0)  # what was in flight lands
        seen = last_seen(stack, gw)
        time.sleep(2.5)  # several reconnect attempts of the agent (backoff <= 0.5 s)
        assert last_seen(stack, gw) == seen
        assert agent.poll() is None or agent.returncode != 0
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(30)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
    text = log.read_text()
    assert "not authori" in text.lower() or "refused" in text.lower(), text[-2000:]
    # the revoked credentials are refused to anyone
    intruder = Client(broker, gw, password_file.read_text().strip(), client_id=f"edge-{gw}")
    try:
        assert intruder.connected() in (NOT_AUTHORIZED, 0x86)
    finally:
        intruder.close()
    assert edge_enroll(stack, token, tmp_path / "late").returncode == 1

    assert audit(stack, gw) == [
        ("gateway.register", "refused: 403 needs role engineer or higher; this key is operator"),
        ("gateway.register", "ok"),
        ("gateway.enroll", "ok"),
        ("gateway.enroll", "refused: token used"),
        (
            "gateway.register",
            "refused: 409 gateway 'gw-enrol' is enrolled; revoke it first (DELETE .../enrolment)",
        ),
        ("gateway.revoke", "ok"),
        ("gateway.enroll", "refused: token revoked"),
    ]


def test_expired_and_unknown_tokens_are_refused(stack: ApiStack, tmp_path: Path) -> None:
    gw = "gw-late"
    token = stack.client("engineer").post(f"/v1/gateways/{gw}/enrolment").json()["token"]
    with stack.db.session() as s:
        from api.storage import Enrolment

        row = s.get(Enrolment, gw)
        assert row is not None
        row.expires_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    assert state(stack, gw) == "expired"
    assert stack.db.enrolments()[gw] == "expired"
    done = edge_enroll(stack, token, tmp_path / "x")
    assert done.returncode == 1
    assert "expired" in done.stderr
    before = stack.get("/v1/audit", "admin", params={"limit": 1}).json()["total"]
    with stack.client(None) as anonymous:
        resp = anonymous.post("/v1/enrol", json={"token": "sce_" + "A" * 43})
        assert resp.status_code == 401
        assert anonymous.post("/v1/enrol", json={"nope": 1}).status_code == 400
    # an unknown token names no gateway: counted, not written
    assert stack.get("/v1/audit", "admin", params={"limit": 1}).json()["total"] == before
    assert audit(stack, gw) == [
        ("gateway.register", "ok"),
        ("gateway.enroll", "refused: token expired"),
    ]
    # plain http to a remote API is refused before the token leaves the gateway
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "smartcity",
            "edge",
            "enroll",
            "--api",
            "http://192.0.2.1",
            "--token",
            token,
            "--out",
            str(tmp_path / "y"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ},
    )
    assert done.returncode == 1
    assert "plain http" in done.stderr


def test_the_services_client_ids_cannot_be_registered_as_gateways(stack: ApiStack) -> None:
    """``ingest-N`` and ``api-N`` are the services' pinned client ids (provision.sh): a
    gateway with such an id would be handed a client id a service owns."""
    engineer = stack.client("engineer")
    for gw in ("ingest-0", "api-1"):
        resp = engineer.post(f"/v1/gateways/{gw}/enrolment")
        assert resp.status_code == 400, resp.text
        assert "reserved" in resp.json()["detail"]
        assert audit(stack, gw) == [("gateway.register", f"refused: 400 {resp.json()['detail']}")]
    assert engineer.post("/v1/gateways/ingestor-1/enrolment").status_code == 201


@pytest.fixture
def replica(
    broker: ShippedBroker, influxd: Influxd, stack: ApiStack, tmp_path: Path
) -> Iterator[Callable[[], ApiStack]]:
    """Start a second API replica (``_api-2``) on the same broker and InfluxDB database, on
    its own database file; it is stopped at the end (or by closing it)."""
    started: list[ApiStack] = []

    def start() -> ApiStack:
        s = start_stack(
            broker, influxd, root="sc", database=stack.database,
            db_path=tmp_path / f"replica-{len(started)}.sqlite3",
            mqtt={"username": "_api-2", "password": "pw-api", "client_id": "api-2"},
        )  # fmt: skip
        started.append(s)
        return s

    yield start
    for s in started:
        s.close()


def _enrol(stack: ApiStack, gateway: str) -> dict[str, Any]:
    """Register and enrol ``gateway`` over the API; its credentials."""
    token = stack.client("engineer").post(f"/v1/gateways/{gateway}/enrolment").json()["token"]
    with httpx.Client(base_url=stack.url, timeout=30) as anonymous:
        resp = anonymous.post("/v1/enrol", json={"token": token})
    assert resp.status_code == 200, resp.text
    creds: dict[str, Any] = resp.json()
    return creds


def _shown(stack: ApiStack, gateway: str) -> tuple[Any, Any]:
    doc = stack.get(f"/v1/gateways/{gateway}").json()
    return doc.get("state"), doc.get("reason")


def test_a_revocation_on_one_replica_takes_the_gateway_offline_on_every_replica(
    stack: ApiStack, broker: ShippedBroker, replica: Callable[[], ApiStack]
) -> None:
    gw = "gw-replicas"
    b = replica()
    creds = _enrol(stack, gw)
    gateway = Client(broker, creds["username"], creds["password"], client_id=creds["client_id"])
    try:
        assert gateway.connected() == 0
        birth = encode_message(Birth(gw=gw, ts=time.time_ns(), agent="test"))
        assert gateway.publish(f"sc/v1/{gw}/status", birth, retain=True) == 0
        # it speaks for itself only: another gateway's status is refused
        forged = encode_message(Death(gw="gw-a", ts=time.time_ns(), reason="revoked"))
        assert gateway.publish("sc/v1/gw-a/status", forged, retain=True) == NOT_AUTHORIZED
        for api in (stack, b):
            wait_until(lambda api=api: _shown(api, gw) == ("online", None), 10)  # type: ignore[misc]

        t0 = time.monotonic()
        assert stack.client("engineer").delete(f"/v1/gateways/{gw}/enrolment").status_code == 200
        revoked_at = time.monotonic()
        wait_until(lambda: _shown(b, gw) == ("offline", "revoked"), 3.0)  # ms when quiet
        seen = time.monotonic()
        print(
            f"revoke on A: {1000 * (revoked_at - t0):.0f} ms; "
            f"B offline {1000 * (seen - revoked_at):.0f} ms after A answered"
        )
        assert _shown(stack, gw) == ("offline", "revoked")
        gateway.wait(lambda: gateway.disconnects > 0)  # the broker dropped it
    finally:
        gateway.client.loop_stop()
        gateway.client.disconnect()

    # a replica started afterwards learns it from the retained death
    b.close()
    later = replica()
    wait_until(lambda: _shown(later, gw) == ("offline", "revoked"), 10)

    # enrolled again: its birth replaces the retained death, everywhere
    creds = _enrol(stack, gw)
    again = Client(broker, creds["username"], creds["password"], client_id=creds["client_id"])
    try:
        assert again.connected() == 0
        birth = encode_message(Birth(gw=gw, ts=time.time_ns(), agent="test"))
        assert again.publish(f"sc/v1/{gw}/status", birth, retain=True) == 0
        for api in (stack, later):
            wait_until(lambda api=api: _shown(api, gw) == ("online", None), 10)  # type: ignore[misc]
    finally:
        again.client.loop_stop()
        again.client.disconnect()
    later.close()
    newest = replica()  # starts with what the broker retains: the birth
    wait_until(lambda: _shown(newest, gw)[0] is not None, 10)
    assert _shown(newest, gw) == ("online", None)


def test_update_roles_grants_status_to_an_api_role_made_by_an_older_provision_sh(
    stack: ApiStack, broker: ShippedBroker, tmp_path: Path
) -> None:
    """A broker provisioned before the API published deaths: its ``smartcity-api`` role has
    no ``publishClientSend sc/v1/+/status``. A revocation there still revokes, and answers
    503 saying the death was not published; ``provision.sh update-roles`` adds the rule (and
    nothing else), and the repeated DELETE publishes it."""
    # mosquitto_ctrl 2.0.11 reads its options only from $XDG_CONFIG_HOME/mosquitto_ctrl
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path)}
    (tmp_path / "mosquitto_ctrl").symlink_to(broker.admin_options)

    def dynsec(*args: str) -> str:
        done = subprocess.run(["mosquitto_ctrl", "dynsec", *args], env=env, capture_output=True,
                              text=True, timeout=30, check=True)  # fmt: skip
        assert "Error" not in done.stdout + done.stderr, done
        return done.stdout

    dynsec("removeRoleACL", "smartcity-api", "publishClientSend", "sc/v1/+/status")
    api = Client(broker, "_api-2", "pw-api", client_id="api-2")
    try:
        assert api.connected() == 0
        assert api.publish("sc/v1/gw-old/status", b"x") == NOT_AUTHORIZED
    finally:
        api.client.loop_stop()
        api.client.disconnect()
    gw = "gw-old-broker"
    _enrol(stack, gw)
    engineer = stack.client("engineer")
    resp = engineer.delete(f"/v1/gateways/{gw}/enrolment")
    assert resp.status_code == 503, resp.text
    first_detail = resp.json()["detail"]
    assert "is revoked (broker user removed, token refused), but its offline status could " \
           "not be published" in resp.json()["detail"]  # fmt: skip
    assert state(stack, gw) == "revoked"

    done = broker.provision("update-roles", password=None)
    assert "role smartcity-api: added publishClientSend sc/v1/+/status" in done.stdout, done
    assert "smartcity-ingest: added" not in done.stdout
    assert broker.provision("update-roles", password=None).stdout == ""  # nothing to add
    api = Client(broker, "_api-2", "pw-api", client_id="api-2")
    try:
        assert api.connected() == 0
        assert api.publish("sc/v1/gw-old/status", b"", retain=True) in (0, 0x10)  # 0x10: no one
    finally:
        api.client.loop_stop()
        api.client.disconnect()
    resp = engineer.delete(f"/v1/gateways/{gw}/enrolment")
    assert resp.status_code == 200, resp.text
    wait_until(lambda: _shown(stack, gw) == ("offline", "revoked"), 5)
    revokes = [result for action, result in audit(stack, gw) if action == "gateway.revoke"]
    assert revokes == [f"failed: 503 {first_detail}", "ok"]
