"""Running many gateways: `edge status` and the local endpoint with the uplink down, link
drop counters (CRC, COBS, readings before HELLO) in health and /metrics, sd_notify readiness
and the watchdog, a quiet clean stop."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cobs import cobs
from edge_helpers import Central, base_config, wait_until
from prometheus_client.parser import text_string_to_metric_families

from firmware_bridge import Channel, Hello, Readings, ValueType, encode_frame, encode_message
from simulators.devices import PtyPort
from smartcity._localstack import Mosquitto, free_port

SMARTCITY = str(Path(sys.executable).with_name("smartcity"))


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory: unix socket paths are limited to 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="sc-", dir="/tmp") as d:
        yield Path(d)


@contextlib.contextmanager
def agent_process(
    config: dict[str, Any], where: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    path = where / "edge.yaml"
    path.write_text(yaml.safe_dump(config))
    log = (where / "agent.log").open("ab")
    proc = subprocess.Popen(
        [SMARTCITY, "edge", "run", "--config", str(path), "--log-format", "json"],
        stdout=log, stderr=log, cwd="/", env={**os.environ, **(env or {})},
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def edge_status(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SMARTCITY, "edge", "status", "--config", str(config), *extra],
        capture_output=True, text=True, timeout=30, cwd="/",
    )


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = sorted((k, v) for k, v in s.labels.items() if k != "gateway")
            out[s.name + "".join(f",{k}={v}" for k, v in labels)] = s.value
    return out


def noise_frames() -> bytes:
    """Serial noise, a frame with a bad CRC, and READINGS from a board that sent no HELLO."""
    now_ms = int(time.time() * 1000)
    t, payload = encode_message(Readings(ts_ms=now_ms, values=((0, ValueType.F32, 1.0),)))
    good = encode_frame(t, 0x0B01, 7, payload)
    body = bytearray(cobs.decode(good[1:-1]))
    body[-1] ^= 0xFF
    bad_crc = b"\x00" + cobs.encode(bytes(body)) + b"\x00"
    return b"\x00\x13\x37line noise\xff\xfe\x00" + bad_crc + good


def hello_frame() -> bytes:
    hello = Hello(
        firmware_version=(1, 0, 0), has_clock=True, sample_interval_ms=100,
        channels=(Channel(index=0, value_type=ValueType.F32, measurement="Test", field="v"),),
    )
    t, payload = encode_message(hello)
    return encode_frame(t, 0x0B01, 1, payload)


@pytest.mark.integration
def test_status_and_metrics_with_the_uplink_down_show_links_backlog_drops_and_errors(
    short_dir: Path,
) -> None:
    """The broker is unreachable (nothing listens on its port): `edge status` and the local
    endpoint still answer, with the uplink's errno, the spool backlog, the firmware link's
    CRC/COBS/readings-before-HELLO counters (before, health said `loops: up` and those
    counters were in neither health nor metrics) and the device clock offset."""
    port = free_port()
    pty = PtyPort(short_dir / "ttyFW0")
    pty.plug()
    data: dict[str, Any] = {
        "gateway": {"id": "gw-ops", "state_dir": str(short_dir / "state")},
        "broker": {"host": "127.0.0.1", "port": free_port(), "backoff_initial_s": 0.2,
                   "backoff_max_s": 0.5, "connect_timeout_s": 1},
        "batch": {"max_age_s": 0.2},
        "metrics": {"port": port},
        "inputs": [
            {"type": "firmware", "name": "loops", "serial": {"url": str(pty.link_path)},
             "device_names": {0x0B01: "loop-9"}},
            {"type": "simulated", "name": "sim", "devices": 2, "rate_hz": 20},
        ],
    }
    try:
        with agent_process(data, short_dir):
            wait_until(lambda: get_or_none(port, "/healthz") == (200, "ok\n"), 20, "healthz")
            pty.write(noise_frames())
            pty.write(hello_frame() + noise_frames()[-40:])
            cfg = short_dir / "edge.yaml"

            doc: dict[str, Any] = {}

            def counted() -> bool:
                nonlocal doc
                res = edge_status(cfg, "--json")
                assert res.returncode == 0, res.stderr
                doc = json.loads(res.stdout)
                drops = doc["inputs"]["loops"]["drops"]
                return (
                    drops.get("crc_error", 0) >= 1
                    and drops.get("readings_before_hello", 0) >= 1
                    and doc["spool"]["batches"] > 0
                    and doc["uplink"]["last_errno"] == "ECONNREFUSED"
                )

            wait_until(counted, 20, "drops, backlog and the uplink error in the status")
            assert doc["links"] == {"loops": "up", "sim": "up", "uplink": "down"}
            assert doc["uplink"]["connect_failures"] >= 1
            assert doc["spool"]["disk_free_bytes"] > 0
            assert doc["dropped"]["input_link"] >= 2
            assert doc["process"]["rss_bytes"] > 0
            # the human form: one line per link, the uplink's error, the backlog
            text = edge_status(cfg).stdout
            assert "uplink      down" in text
            assert "ECONNREFUSED" in text
            assert "loops       up" in text
            assert "crc_error 1" in text
            assert "spool: " in text
            assert "disk free" in text

            status, body = get(port, "/metrics")
            assert status == 200
            m = samples(body)
            assert m["edge_uplink_up"] == 0
            assert m["edge_uplink_connect_failures_total"] >= 1
            assert m["edge_uplink_last_error_info,errno=ECONNREFUSED"] == 1
            assert m["edge_link_up,input=loops"] == 1
            assert m["edge_link_up,input=sim"] == 1
            assert m["edge_link_dropped_total,input=loops,reason=crc_error"] >= 1
            assert m["edge_link_dropped_total,input=loops,reason=readings_before_hello"] >= 1
            assert m["edge_link_events_total,event=link_up,input=loops"] == 1
            assert m["edge_process_resident_memory_bytes"] > 0
            assert m["edge_process_cpu_seconds_total"] > 0
            assert m["edge_spool_disk_free_bytes"] > 0
            assert m["edge_spool_batches"] > 0
            assert any(k.startswith("edge_build_info,version=") for k in m)
            # only /metrics answers with metrics
            assert get(port, "/healthz") == (200, "ok\n")
            assert get(port, "/")[0] == 404
            assert get(port, "/favicon.ico")[0] == 404
            assert get(port, "/metrics/x")[0] == 404
            # the clock offset of the device-stamped reading the board sent after its HELLO
            wait_until(
                lambda: json.loads(edge_status(cfg, "--json").stdout)["inputs"]["loops"][
                    "clock_offset_s"] is not None,
                10, "device clock offset",
            )
    finally:
        pty.unplug()


def get_or_none(port: int, path: str) -> tuple[int, str] | None:
    try:
        return get(port, path)
    except OSError:
        return None


class NotifySocket:
    """A unix datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.got: list[tuple[float, str]] = []

    def drain(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.got.append((time.monotonic(), data.decode()))

    def times(self, message: str) -> list[float]:
        return [t for t, m in self.got if message in m.splitlines()]

    def close(self) -> None:
        self.sock.close()


@pytest.mark.integration
def test_sd_notify_ready_then_watchdog_pings_that_stop_while_the_loop_is_stalled(
    short_dir: Path,
) -> None:
    """READY=1 once running, WATCHDOG=1 every WATCHDOG_USEC/2 from the event loop; a
    deliberately stalled loop (the debug hook) sends none for as long as it is blocked, so
    systemd's WatchdogSec would kill it; STOPPING=1 on SIGTERM. (systemd is not PID 1 in the
    test container, so the fake $NOTIFY_SOCKET stands in for it.)"""
    notify = NotifySocket(short_dir / "notify")
    data = {
        "gateway": {"id": "gw-ops", "state_dir": str(short_dir / "state")},
        "broker": {"host": "127.0.0.1", "port": free_port()},
        "metrics": {"port": None},
        "inputs": [{"type": "simulated", "name": "sim", "devices": 1}],
    }
    env = {
        "NOTIFY_SOCKET": str(notify.path),
        "WATCHDOG_USEC": "400000",  # pings every 0.2 s
        "SMARTCITY_EDGE_DEBUG_STALL": "2:2.5",  # 2 s after start, block the loop for 2.5 s
    }
    try:
        with agent_process(data, short_dir, env) as proc:
            deadline = time.monotonic() + 20
            while not notify.times("READY=1") and time.monotonic() < deadline:
                notify.drain(0.5)
            ready = notify.times("READY=1")
            assert ready, notify.got
            notify.drain(6)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
            notify.drain(0.5)
    finally:
        notify.close()
    pings = notify.times("WATCHDOG=1")
    assert pings
    assert pings[0] >= ready[0]
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    stalls = [g for g in gaps if g > 1.0]
    assert len(stalls) == 1, gaps  # exactly the one stall
    assert 2.2 <= stalls[0] <= 4.0, stalls
    assert sum(1 for g in gaps if g <= 0.5) >= 10  # regular pings before and after it
    assert notify.times("STOPPING=1")
    log = (short_dir / "agent.log").read_text()
    assert "debug: blocking the event loop" in log


@pytest.mark.integration
def test_a_clean_stop_logs_no_lost_input(
    mosquitto: Mosquitto, topic_root: str, short_dir: Path,
    central_factory: Callable[..., Central],
) -> None:
    """SIGTERM used to log the warning `input lost: Normal disconnection` for local MQTT
    inputs: a stop is not a loss."""
    central_factory(mosquitto, topic_root)
    data = base_config(short_dir, mosquitto, topic_root)
    data["metrics"] = {"port": None}
    data["inputs"] = [
        {
            "type": "mqtt", "name": "local", "port": mosquitto.port,
            "client_id": f"in-{topic_root}",
            "subscriptions": [
                {"topic": f"{topic_root}/local/+/v", "device": "{2}", "measurement": "Test",
                 "format": "number", "field": "v"}
            ],
        }
    ]
    with agent_process(data, short_dir) as proc:
        def up() -> bool:
            res = edge_status(short_dir / "edge.yaml", "--json")
            return res.returncode == 0 and json.loads(res.stdout)["links"] == {
                "local": "up", "uplink": "up"}

        wait_until(up, 20, "input and uplink up")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    log = (short_dir / "agent.log").read_text()
    assert "edge agent stopped" in log
    assert "input lost" not in log
    assert "uplink lost" not in log
    assert not (short_dir / "state" / "agent.sock").exists()
