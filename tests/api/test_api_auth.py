"""Each role can do exactly what it may and no more; keys, rate limits, CORS, demo, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from api_helpers import ROLES, ApiStack, start_stack, wait_until
from paho.mqtt.enums import CallbackAPIVersion

from api import ApiSettings, ConfigError, Database, load_settings
from smartcity._localstack import Influxd, Mosquitto
from telemetry import ConfigDesired, Topics, decode_message

pytestmark = pytest.mark.integration

RULE = {"name": "noise", "kind": "threshold", "measurement": "NoiseLevelObserved",
        "field": "LAeq", "op": ">", "threshold": 70, "duration_s": 60}

# (method, path, body, least role allowed)
MATRIX: list[tuple[str, str, dict[str, Any] | None, str]] = [
    ("GET", "/v1/gateways", None, "viewer"),
    ("GET", "/v1/devices", None, "viewer"),
    ("GET", "/v1/live", None, "viewer"),
    ("GET", "/v1/history?device=d&measurement=AirQualityObserved&field=pm25", None, "viewer"),
    ("GET", "/v1/transport/vehicles", None, "viewer"),
    ("GET", "/v1/transport/links", None, "viewer"),
    ("GET", "/v1/transport/parking", None, "viewer"),
    ("GET", "/v1/gtfs-rt/vehicle-positions", None, "viewer"),
    ("GET", "/v1/resources/air", None, "viewer"),
    ("GET", "/v1/alerts", None, "viewer"),
    ("GET", "/v1/alert-rules", None, "viewer"),
    ("GET", "/v1/vocabulary", None, "viewer"),
    ("GET", "/v1/me", None, "viewer"),
    ("GET", "/v1/dashboard/config", None, "viewer"),
    ("GET", "/metrics", None, "viewer"),
    ("POST", "/v1/alert-rules", RULE, "operator"),
    ("PUT", "/v1/alert-rules/1", {**RULE, "name": "replaced"}, "operator"),
    ("POST", "/v1/alerts/0123456789abcdef/ack", {"note": "seen"}, "operator"),
    ("PUT", "/v1/gateways/auth-gw/config", {"version": 2, "config": {"a": 1}}, "engineer"),
    ("GET", "/v1/keys", None, "admin"),
    ("POST", "/v1/keys", {"name": "made-by-test", "role": "viewer"}, "admin"),
    ("DELETE", "/v1/keys/0123456789abcdef0123456789abcdef", None, "admin"),
]


@pytest.mark.parametrize(("method", "path", "body", "least"), MATRIX,
                         ids=[f"{m} {p.split('?')[0]}" for m, p, _, _ in MATRIX])
def test_each_role_can_do_exactly_what_it_may(
    api_stack: ApiStack, method: str, path: str, body: dict[str, Any] | None, least: str
) -> None:
    for role in (None, *ROLES):
        response = api_stack.client(role).request(method, path, json=body)
        if role is None:
            assert response.status_code == 401, (role, response.text)
            assert response.headers["content-type"] == "application/problem+json"
        elif ROLES.index(role) < ROLES.index(least):
            assert response.status_code == 403, (role, response.text)
            assert response.json()["title"] == "Role not allowed"
        else:
            # Allowed: the request is served (404 for the made-up alert and key ids).
            assert response.status_code in (200, 201, 202, 404), (role, response.text)


def test_me_tells_each_key_its_role_and_what_it_may_do(api_stack: ApiStack) -> None:
    may = {
        "viewer": set(),
        "operator": {"acknowledge_alerts", "manage_alert_rules"},
        "engineer": {"acknowledge_alerts", "manage_alert_rules", "configure_gateways"},
        "admin": {"acknowledge_alerts", "manage_alert_rules", "configure_gateways",
                  "manage_keys", "read_audit"},
    }
    for role in ROLES:
        me = api_stack.client(role).get("/v1/me").json()
        assert me["role"] == role
        assert me["name"]
        assert len(me["key_id"]) == 32
        assert {action for action, allowed in me["can"].items() if allowed} == may[role], role
    # What "can" promises is what the API then does: a viewer is refused, an operator is not.
    ack = "/v1/alerts/0123456789abcdef/ack"
    assert api_stack.client("viewer").post(ack, json={}).status_code == 403
    assert api_stack.client("operator").post(ack, json={}).status_code == 404


def test_engineer_config_push_reaches_the_config_topic(api_stack: ApiStack) -> None:
    response = api_stack.client("engineer").put(
        "/v1/gateways/cfg-gw/config", json={"version": 7, "config": {"inputs": []}}
    )
    assert response.status_code == 202
    received: list[bytes] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = lambda _c, _u, msg: received.append(msg.payload)
    client.connect(api_stack.mosquitto.host, api_stack.mosquitto.port)
    client.subscribe(Topics(api_stack.root).config_desired("cfg-gw"), qos=1)
    client.loop_start()
    try:
        wait_until(lambda: received)
    finally:
        client.disconnect()
        client.loop_stop()
    desired = decode_message(received[0], ConfigDesired)
    assert desired.version == 7
    assert desired.config == {"inputs": []}


def test_unknown_bearer_and_revoked_keys_are_refused(api_stack: ApiStack) -> None:
    url = f"{api_stack.url}/v1/gateways"
    assert httpx.get(url, headers={"X-API-Key": "sck_" + "A" * 43}).status_code == 401
    viewer = api_stack.keys["viewer"]
    assert httpx.get(url, headers={"Authorization": f"Bearer {viewer}"}).status_code == 200
    admin = api_stack.client("admin")
    created = admin.post("/v1/keys", json={"name": "short-lived", "role": "viewer"}).json()
    assert created["key"].startswith("sck_")
    listed = admin.get("/v1/keys").json()["items"]
    assert all("key" not in item for item in listed)
    assert httpx.get(url, headers={"X-API-Key": created["key"]}).status_code == 200
    assert admin.delete(f"/v1/keys/{created['id']}").json()["revoked_at"] is not None
    assert httpx.get(url, headers={"X-API-Key": created["key"]}).status_code == 401
    # Only the hash is stored.
    rows = api_stack.db.list_keys()
    assert all(created["key"] not in (r.key_hash, r.prefix) for r in rows)


def test_rate_limit_and_cors(
    mosquitto: Mosquitto, influxd: Influxd, influx_db: str, tmp_path: Path
) -> None:
    stack = start_stack(mosquitto, influxd, root=f"t{uuid.uuid4().hex[:12]}",
                        database=influx_db, db_path=tmp_path / "api.sqlite3",
                        rate_limit_per_s=1.0, rate_limit_burst=5,
                        auth_failures_per_s=0.1, auth_failures_burst=3,
                        cors_origins=["https://dashboard.example"])
    try:
        statuses = [stack.get("/v1/gateways").status_code for _ in range(8)]
        assert statuses[:5] == [200] * 5
        assert 429 in statuses[5:]
        limited = stack.get("/v1/gateways")
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1
        # Another key has its own budget.
        assert stack.get("/v1/gateways", role="operator").status_code == 200
        # Guessing keys is throttled per client address.
        guesses = [stack.get("/v1/gateways", role=None).status_code for _ in range(5)]
        assert guesses[:3] == [401] * 3
        assert guesses[3:] == [429, 429]
        preflight = httpx.options(
            f"{stack.url}/v1/gateways",
            headers={"Origin": "https://dashboard.example", "Access-Control-Request-Method": "GET",
                     "Access-Control-Request-Headers": "X-API-Key"},
        )
        assert preflight.headers["access-control-allow-origin"] == "https://dashboard.example"
        other = httpx.options(
            f"{stack.url}/v1/gateways",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
        )
        assert "access-control-allow-origin" not in other.headers
    finally:
        stack.close()


def test_settings_refuse_insecure_combinations(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cors_origins"):
        load_settings(None, cors_origins=["*"])
    with pytest.raises(ConfigError, match="demo mode listens on loopback"):
        load_settings(None, demo=True, host="0.0.0.0")  # noqa: S104
    bad = tmp_path / "api.yaml"
    bad.write_text("max_points: -1\nno_such_key: 1\n")
    with pytest.raises(ConfigError, match=r"api\.yaml.*max_points"):
        load_settings(bad)
    assert ApiSettings(demo=True, cors_origins=["*"]).demo


def test_cli_bootstraps_an_admin_key_that_works(
    mosquitto: Mosquitto, influxd: Influxd, influx_db: str, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'ops.sqlite3'}"
    done = subprocess.run(
        [sys.executable, "-m", "smartcity", "api", "create-key", "--role", "admin",
         "--name", "ops", "--database-url", url],
        capture_output=True, text=True, check=True, timeout=60,
    )
    key = done.stdout.strip()
    assert key.startswith("sck_")
    assert "not shown again" in done.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "smartcity", "api", "list-keys", "--database-url", url],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    assert "admin" in listed
    assert key not in listed
    db = Database(url)
    from api_helpers import settings_for

    from api import ApiServer

    settings = settings_for(mosquitto, influxd, root=f"t{uuid.uuid4().hex[:12]}",
                            database=influx_db, db_url=url)
    with ApiServer(settings, db=db) as server:
        answer = httpx.post(f"{server.url}/v1/keys", headers={"X-API-Key": key},
                            json={"name": "dash", "role": "viewer"})
        assert answer.status_code == 201
        assert httpx.get(f"{server.url}/v1/keys", headers={"X-API-Key": key}).status_code == 200
        assert httpx.get(f"{server.url}/v1/gateways").status_code == 401
    check = subprocess.run(
        [sys.executable, "-m", "smartcity", "api", "check-config"],
        capture_output=True, text=True, check=True, timeout=60,
        env={"SMARTCITY_API_MAX_POINTS": "1234", "PATH": "/usr/bin:/bin"},
    )
    assert json.loads(check.stdout)["max_points"] == 1234


def test_demo_mode_prints_a_key_per_role(
    mosquitto: Mosquitto, influxd: Influxd, influx_db: str, tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    stack = start_stack(mosquitto, influxd, root=f"t{uuid.uuid4().hex[:12]}",
                        database=influx_db, db_path=tmp_path / "api.sqlite3", demo=True)
    try:
        keys = stack.server.services.demo_keys
        assert set(keys) == set(ROLES)
        err = capfd.readouterr().err
        assert "DEMO MODE" in err
        assert all(k in err for k in keys.values())
        assert httpx.get(f"{stack.url}/v1/keys",
                         headers={"X-API-Key": keys["admin"]}).status_code == 200
        assert httpx.get(f"{stack.url}/v1/gateways").status_code == 401
    finally:
        stack.close()
