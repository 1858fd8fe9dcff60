"""Gateway provisioning end to end on the shipped broker (deploy/mosquitto, dynamic security):
an engineer registers a gateway, `smartcity edge enroll` redeems the one-time token for the
gateway's own broker user, a real edge agent runs with it, a revocation drops it at once and
its credentials are refused from then on. Every step leaves one audit entry."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from api_helpers import ApiStack, start_stack, wait_until
from websockets.sync.client import connect

from smartcity._localstack import Influxd
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
        b.provision("add-service", "api", password="pw-api")  # _api-1, client id api-1
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
