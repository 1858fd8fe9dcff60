"""Remote operations through the API against a real edge agent, and the fleet view.

``POST /v1/gateways/{gw}/commands/{name}`` on a real API (uvicorn thread), real mosquitto,
and ``smartcity edge run`` in its own process (clock skewed 5 s by the test hook, a firmware
board of the simulator on a pty). Each call must leave exactly one audit entry.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from api_helpers import ApiStack, Publisher, start_stack, wait_until

from edge_agent._remote_ops import CLOCK_OFFSET_ENV
from simulators.devices import FirmwareDevice, FirmwareDeviceConfig, PtyPort
from smartcity._localstack import Influxd, Mosquitto
from telemetry import Health, SpoolHealth, encode_message

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(
    mosquitto: Mosquitto, influxd: Influxd, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiStack]:
    root = f"t{uuid.uuid4().hex[:12]}"
    database = f"api_{uuid.uuid4().hex[:12]}"
    influxd.create_database(database)
    s = start_stack(
        mosquitto, influxd, root=root, database=database,
        db_path=tmp_path_factory.mktemp("apidb") / "api.sqlite3",
        command_burst=12, command_rate_per_min=1.0, clock_off_threshold_s=2.0,
        disk_low_bytes=50 * 2**20, gap_repair=False,
    )
    try:
        yield s
    finally:
        s.close()
        influxd.drop_database(database)


@pytest.fixture
def publisher(stack: ApiStack) -> Iterator[Publisher]:
    pub = Publisher(stack.mosquitto, stack.root)
    yield pub
    pub.close()


_clients: list[httpx.Client] = []


def engineer(stack: ApiStack, role: str = "engineer") -> httpx.Client:
    """A client with a key of its own (the command rate limit is per key)."""
    _, key = stack.db.create_key(name=f"k-{uuid.uuid4().hex[:6]}", role=role)
    client = httpx.Client(base_url=stack.url, headers={"X-API-Key": key}, timeout=60)
    _clients.append(client)
    return client


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


def audit_entries(stack: ApiStack, gateway: str) -> list[dict[str, Any]]:
    """The audit entries of ``gateway`` (``GET /v1/audit``, admin)."""
    resp = stack.get("/v1/audit", "admin", params={"gateway": gateway, "limit": 1000})
    assert resp.status_code == 200, resp.text
    items: list[dict[str, Any]] = resp.json()["items"]
    return items


def command(client: httpx.Client, gw: str, name: str, body: dict[str, Any] | None = None,
            **params: Any) -> httpx.Response:
    return client.post(f"/v1/gateways/{gw}/commands/{name}", json=body or {}, params=params)


def test_viewer_and_operator_keys_are_refused(stack: ApiStack, publisher: Publisher) -> None:
    gw = "gw-cmd-roles"
    publisher.birth(gw, [])
    wait_until(lambda: stack.get(f"/v1/gateways/{gw}").status_code == 200)
    for role in ("viewer", "operator"):
        resp = command(stack.client(role), gw, "ping")
        assert resp.status_code == 403, resp.text
    entries = audit_entries(stack, gw)
    assert len(entries) == 2, entries
    assert all(e["result"].startswith("refused") for e in entries), entries


def test_an_offline_gateway_times_out_with_one_audit_entry(
    stack: ApiStack, publisher: Publisher
) -> None:
    gw = "gw-cmd-offline"
    publisher.birth(gw, [])
    publisher.death(gw)
    wait_until(lambda: stack.get(f"/v1/gateways/{gw}").json().get("state") == "offline")
    client = engineer(stack)
    t0 = time.monotonic()
    resp = command(client, gw, "ping", timeout_s=1)
    assert resp.status_code == 504, resp.text
    assert 0.9 < time.monotonic() - t0 < 5
    assert resp.json()["type"].endswith("gateway-timeout")
    entries = audit_entries(stack, gw)
    assert [(e["action"], e["result"]) for e in entries] == [("command.ping", "timeout")]


def test_bad_names_args_and_gateways_are_refused_and_audited(
    stack: ApiStack, publisher: Publisher
) -> None:
    gw = "gw-cmd-bad"
    publisher.birth(gw, [])
    wait_until(lambda: stack.get(f"/v1/gateways/{gw}").status_code == 200)
    client = engineer(stack)
    assert command(client, gw, "reboot-all").status_code == 422
    resp = command(client, gw, "logs", {"lines": 5000})
    assert resp.status_code == 422
    assert "lines" in resp.json()["detail"]
    assert command(client, gw, "restart", {"now": True}).status_code == 422
    assert command(client, gw, "update", {"url": "x", "sha256": "zz"}).status_code == 422
    assert command(client, "gw-cmd-nobody", "ping").status_code == 404
    entries = audit_entries(stack, gw)
    assert len(entries) == 4, entries
    assert all(e["result"].startswith("refused: ") for e in entries), entries
    assert len(audit_entries(stack, "gw-cmd-nobody")) == 1


def test_commands_are_rate_limited_per_key(stack: ApiStack) -> None:
    client, other = engineer(stack), engineer(stack)
    codes = [command(client, "gw-cmd-rate", "ping").status_code for _ in range(13)]
    assert codes[:12] == [404] * 12
    assert codes[12] == 429
    assert command(other, "gw-cmd-rate", "ping").status_code == 404  # its own budget


def test_fleet_view_flags_and_filters(stack: ApiStack, publisher: Publisher) -> None:
    """Health of three crafted gateways: the newest version, an old one with a low disk,
    and a clock the gateway reports 9 s off. Values of the wrong type are shown as null."""
    now = time.time_ns()
    spool = SpoolHealth(batches=0, readings=0, bytes=0, budget_bytes=1, oldest_age_s=None,
                        dropped_batches=0, dropped_readings=0)
    fleet = {
        "gw-fleet-new": Health(gw="gw-fleet-new", ts=now, uptime_s=1, next_seq=0, spool=spool,
                               version="9.10.0", disk_free_bytes=2**30, links={"uplink": "up"}),
        "gw-fleet-old": Health(gw="gw-fleet-old", ts=now, uptime_s=1, next_seq=0, spool=spool,
                               version="9.9.0", disk_free_bytes=2**20, links={"uplink": "up"}),
        "gw-fleet-clock": Health(gw="gw-fleet-clock", ts=now, uptime_s=1, next_seq=0,
                                 spool=spool, version="9.10.0", clock_offset_s=-9.0,
                                 clock_delay_s=0.01, clock_checked_ts=now),
    }
    stack.db.register_enrolment("gw-fleet-old", ttl_s=3600, by="test")
    for gw, health in fleet.items():
        publisher.birth(gw, [])
        publisher.client.publish(f"{stack.root}/v1/{gw}/health", encode_message(health),
                                 qos=1).wait_for_publish(5)

    def rows(**params: Any) -> dict[str, dict[str, Any]]:
        items = stack.get("/v1/gateways", params={"limit": 1000, **params}).json()["items"]
        return {g["id"]: g for g in items if g["id"].startswith("gw-fleet-")}

    wait_until(lambda: all(g["version"] for g in rows().values()) and len(rows()) == 3)
    got = rows()
    assert got["gw-fleet-old"]["flags"] == ["outdated", "disk_low"]
    assert got["gw-fleet-new"]["flags"] == []
    assert got["gw-fleet-old"]["enrolment"] == "pending"
    assert got["gw-fleet-new"]["enrolment"] is None
    assert got["gw-fleet-new"]["links"] == {"uplink": "up"}
    assert got["gw-fleet-new"]["disk_free_bytes"] == 2**30
    clock = got["gw-fleet-clock"]["clock"]
    assert (clock["offset_s"], clock["off"], clock["source"]) == (-9.0, True, "health")
    assert set(rows(status="outdated")) == {"gw-fleet-old"}
    assert set(rows(status="disk_low")) == {"gw-fleet-old"}
    assert set(rows(status="clock_off")) == {"gw-fleet-clock"}
    assert set(rows(status=["clock_off", "disk_low"])) == {"gw-fleet-clock", "gw-fleet-old"}
    assert stack.get("/v1/gateways", params={"status": "on_fire"}).status_code in (400, 422)
    # A hostile health message: wrong types are not shown (and do not break the listing).
    hostile = (b'{"v":1,"gw":"gw-fleet-new","ts":%d,"uptime_s":1,"next_seq":0,"spool":'
               b'{"batches":0,"readings":0,"bytes":0,"budget_bytes":1,"oldest_age_s":null,'
               b'"dropped_batches":0,"dropped_readings":0},"version":"' % now
               + b"9" * 5000 + b'"}')
    publisher.client.publish(f"{stack.root}/v1/gw-fleet-new/health", hostile,
                             qos=1).wait_for_publish(5)
    time.sleep(0.5)
    assert stack.get("/v1/gateways").status_code == 200


@pytest.fixture
def agent_proc(stack: ApiStack, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes],
                                                                   FirmwareDevice, str]]:
    gw = f"gw-cmd-{uuid.uuid4().hex[:6]}"
    port = PtyPort(tmp_path / "ttyFW0")
    port.plug()
    board = FirmwareDevice(port, FirmwareDeviceConfig(sample_interval_ms=200))
    board.start()
    data = {
        "gateway": {"id": gw, "state_dir": str(tmp_path / "state")},
        "broker": {"host": "127.0.0.1", "port": stack.mosquitto.port, "topic_root": stack.root,
                   "client_id": f"edge-{gw}", "backoff_initial_s": 0.2, "backoff_max_s": 1.0},
        "batch": {"max_readings": 100, "max_age_s": 0.2},
        "health": {"interval_s": 0.5},
        "metrics": {"port": None},
        "inputs": [{"type": "firmware", "name": "loops", "serial": {"url": str(port.link_path)}}],
    }
    cfg = tmp_path / "edge.yaml"
    cfg.write_text(yaml.safe_dump(data))
    env = {k: v for k, v in os.environ.items() if k != "INVOCATION_ID"}
    env[CLOCK_OFFSET_ENV] = "5.0"
    log = (tmp_path / "agent.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "run", "--config", str(cfg), "--log-format", "json"],
        stdout=log, stderr=log, env=env,
    )
    try:
        yield proc, board, gw
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        finally:
            board.stop()
            port.unplug()
            log.close()


def test_remote_operations_on_a_real_agent(
    stack: ApiStack, agent_proc: tuple[subprocess.Popen[bytes], FirmwareDevice, str]
) -> None:
    proc, board, gw = agent_proc
    client = engineer(stack)
    wait_until(lambda: stack.get(f"/v1/gateways/{gw}").status_code == 200, 20)
    wait_until(lambda: (stack.get(f"/v1/gateways/{gw}").json().get("health") or {})
               .get("links", {}).get("loops") == "up", 20)

    # ping, then logs capped to 3 lines
    assert command(client, gw, "ping").json()["result"]["pong"] is True
    logs = command(client, gw, "logs", {"lines": 3, "level": "info"})
    assert logs.status_code == 200, logs.text
    assert logs.json()["result"]["count"] == 3
    assert logs.json()["result"]["truncated"] is True

    # sync-time-check: the agent's clock runs 5 s ahead; stored, flagged, reported in health
    resp = command(client, gw, "sync-time-check")
    assert resp.status_code == 200, resp.text
    clock = resp.json()["clock"]
    assert clock["offset_s"] == pytest.approx(5.0, abs=0.5)
    assert clock["off"] is True
    assert clock["recorded"] is True
    listed = stack.get("/v1/gateways", params={"status": "clock_off", "limit": 1000}).json()
    assert gw in {g["id"] for g in listed["items"]}
    wait_until(lambda: (stack.get(f"/v1/gateways/{gw}").json().get("health") or {})
               .get("clock_offset_s") == clock["offset_s"], 10)

    # time-sync: the firmware board behind the agent acknowledges TIME_SYNC
    resp = command(client, gw, "time-sync")
    assert resp.status_code == 200, resp.text
    assert resp.json()["result"]["acked"] == 1
    assert any(type(c).__name__ == "TimeSync" for c in board.executed)

    # restart: acked first, then the same process runs the agent again
    since = stack.get(f"/v1/gateways/{gw}").json()["since"]
    resp = command(client, gw, "restart")
    assert resp.status_code == 200, resp.text
    wait_until(lambda: (g := stack.get(f"/v1/gateways/{gw}").json())["state"] == "online"
               and g["since"] != since, 30)
    assert proc.poll() is None
    assert command(client, gw, "ping", timeout_s=10).status_code == 200

    results = [(e["action"], e["result"]) for e in audit_entries(stack, gw)]
    assert sorted(results) == sorted([
        ("command.ping", "acked"), ("command.logs", "acked"),
        ("command.sync-time-check", "acked"), ("command.time-sync", "acked"),
        ("command.restart", "acked"), ("command.ping", "acked"),
    ]), results
