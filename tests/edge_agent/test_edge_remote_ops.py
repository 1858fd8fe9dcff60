"""Remote operations on real agents: ``logs``, ``sync-time-check``, ``time-sync``, ``restart``.

Commands go over the real mosquitto as the API sends them (MQTT v5 request/response); the
firmware device is the simulator's board on a pty; the restart test runs ``smartcity edge
run`` in its own process and checks that it comes back with its spool intact.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from edge_helpers import Central, Requester, await_until, base_config, make_config, running
from edge_helpers import wait_until as wait_for

from edge_agent import EdgeAgent
from edge_agent._local import status_document
from edge_agent._metrics import SnapshotCollector
from edge_agent._remote_ops import CLOCK_OFFSET_ENV, LogRing, redact
from edge_agent._status import format_status
from firmware_bridge import TimeSync
from simulators.devices import FirmwareDevice, FirmwareDeviceConfig, PtyPort
from smartcity._localstack import Mosquitto
from telemetry import Birth, Topics, decode_status


def _record(ring: LogRing, msg: str, *, level: int = logging.INFO, **extra: object) -> None:
    rec = logging.getLogger("edge_agent").makeRecord(
        "edge_agent", level, __file__, 1, msg, None, None, extra=extra
    )
    ring.handle(rec)


def test_log_ring_is_bounded_redacted_and_filtered() -> None:
    ring = LogRing(lines=50, max_bytes=4096)
    _record(ring, "connect to mqtts://gw:hunter2@broker:8883 password=hunter2 token: abc123",
            password="hunter2", api_key="sck_secret", nested={"token": "t0k"},
            header="Bearer eyJhbGciOi")
    line = json.loads(ring.query(lines=10, since=None, level=0, max_bytes=8192)["lines"][0])
    text = json.dumps(line)
    for secret in ("hunter2", "sck_secret", "t0k", "abc123", "eyJhbGciOi"):
        assert secret not in text, (secret, text)
    assert "mqtts://gw:***@broker:8883" in line["event"]
    assert line["password"] == "***"
    assert redact("-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----") == (
        "-----PRIVATE KEY ***-----"
    )

    for i in range(200):  # far past both bounds
        _record(ring, f"event {i}", level=logging.WARNING if i % 2 else logging.INFO,
                filler="x" * 40)
    got = ring.query(lines=1000, since=None, level=0, max_bytes=128 * 1024)
    assert got["held"] <= 50
    assert got["evicted"] >= 151
    assert sum(len(x) for x in got["lines"]) <= 4096
    assert json.loads(got["lines"][-1])["event"] == "event 199"  # the newest kept
    last3 = ring.query(lines=3, since=None, level=0, max_bytes=128 * 1024)
    assert [json.loads(x)["event"] for x in last3["lines"]] == [
        "event 197", "event 198", "event 199"]
    assert last3["truncated"]
    warnings = ring.query(lines=1000, since=None, level=logging.WARNING, max_bytes=128 * 1024)
    assert {json.loads(x)["level"] for x in warnings["lines"]} == {"warning"}
    small = ring.query(lines=1000, since=None, level=0, max_bytes=1024)
    assert small["bytes"] <= 1024
    assert small["truncated"]
    assert ring.query(lines=10, since=time.time() + 1, level=0, max_bytes=1024)["count"] == 0


@pytest.mark.integration
def test_logs_clock_check_and_time_sync_over_the_broker(
    mosquitto: Mosquitto, topic_root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One agent with a firmware board on a pty and a clock 3 s ahead (the test hook)."""
    monkeypatch.setenv(CLOCK_OFFSET_ENV, "3.0")
    caplog.set_level(logging.INFO)  # what `edge run` logs (the ring sees what the root passes)
    port = PtyPort(tmp_path / "ttyFW0")
    port.plug()
    board = FirmwareDevice(port, FirmwareDeviceConfig(sample_interval_ms=100))
    data = base_config(tmp_path, mosquitto, topic_root)
    data["inputs"] = [{"type": "firmware", "name": "loops",
                       "serial": {"url": str(port.link_path)}}]
    agent = EdgeAgent(make_config(data))
    req = Requester(mosquitto.port, topic_root)
    cmd_topic = Topics(topic_root).command("gw-test")

    async def ask(cmd: str, corr: bytes, **args: object) -> dict[str, object]:
        req.request(cmd_topic, cmd, corr, **args)
        await await_until(lambda: corr in req.replies, 10, f"answer to {cmd}")
        resp = req.replies[corr]
        assert resp.ok, resp.error
        return resp.result

    async def main() -> None:
        async with running(agent):
            board.start()
            await await_until(
                lambda: any(link.devices and all(d.hello for d in link.devices.values())
                            for _, link in agent.firmware_links()),
                10, "the board's HELLO",
            )
            logging.getLogger("edge_agent").warning(
                "test secret", extra={"password": "hunter2", "url": "mqtt://u:hunter2@h"})

            # logs: capped in lines, filtered by level, secrets redacted
            got = await ask("logs", b"logs-1", lines=3)
            assert got["count"] == 3
            assert got["truncated"] is True
            everything = await ask("logs", b"logs-2", lines=1000, level="warning")
            assert any("test secret" in x for x in everything["lines"])  # type: ignore[union-attr]
            assert "hunter2" not in json.dumps(everything)
            capped = await ask("logs", b"logs-3", lines=1000, max_bytes=1024)
            assert int(capped["bytes"]) <= 1024  # type: ignore[call-overload]
            req.request(cmd_topic, "logs", b"logs-4", lines=10**6)
            await await_until(lambda: b"logs-4" in req.replies, 10, "refusal")
            assert not req.replies[b"logs-4"].ok
            assert "lines" in (req.replies[b"logs-4"].error or "")

            # sync-time-check: the agent's clock is 3 s ahead of ours
            t1 = time.time_ns()
            got = await ask("sync-time-check", b"clock-1", t1_ns=t1)
            t4 = time.time_ns()
            t2, t3 = int(got["t2_ns"]), int(got["t3_ns"])  # type: ignore[call-overload]
            offset = ((t2 - t1) + (t3 - t4)) / 2e9
            assert offset == pytest.approx(3.0, abs=0.5)
            record = {"offset_s": offset, "delay_s": (t4 - t1) / 1e9, "checked_ts": t4,
                      "threshold_s": 2.0}
            assert (await ask("sync-time-check", b"clock-2", record=record))["off"] is True
            health = agent.health()
            assert health.clock_offset_s == pytest.approx(offset, abs=1e-6)
            assert health.clock_checked_ts == t4
            doc = status_document(agent.snapshot())
            assert doc["clock"]["server"]["off"] is True
            assert "CLOCK OFF" in format_status(doc)
            metrics = {m.name: m.samples[0].value
                       for m in SnapshotCollector(agent.snapshot).collect() if m.samples}
            assert metrics["edge_server_clock_offset_seconds"] == pytest.approx(offset, abs=1e-6)

            # time-sync: the board gets TIME_SYNC and acknowledges it
            before = sum(isinstance(c, TimeSync) for c in board.executed)
            got = await ask("time-sync", b"sync-1")
            assert (got["devices"], got["acked"], got["failed"]) == (1, 1, []), got
            assert sum(isinstance(c, TimeSync) for c in board.executed) == before + 1

    try:
        asyncio.run(main())
    finally:
        board.stop()
        port.unplug()
        req.close()


@pytest.mark.integration
def test_restart_command_brings_the_agent_back_with_its_spool(
    mosquitto: Mosquitto, topic_root: str, tmp_path: Path, central_factory: Callable[..., Central]
) -> None:
    """``restart``: the answer comes first, then a clean stop and the same process runs the
    agent again (re-executed: not under systemd). Every batch seq arrives (none lost)."""
    central = central_factory(mosquitto, topic_root)
    data = base_config(tmp_path, mosquitto, topic_root)
    data["inputs"] = [{"type": "simulated", "name": "sim", "devices": 2, "rate_hz": 20}]
    cfg = tmp_path / "edge.yaml"
    cfg.write_text(yaml.safe_dump(data))
    env = {k: v for k, v in os.environ.items() if k != "INVOCATION_ID"}
    log = (tmp_path / "agent.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "run", "--config", str(cfg), "--log-format", "json"],
        stdout=log, stderr=log, env=env,
    )
    status = Topics(topic_root).status("gw-test")
    req = Requester(mosquitto.port, topic_root)
    try:
        def births() -> int:
            return sum(isinstance(decode_status(p), Birth) for p in central.on(status))

        wait_for(lambda: births() >= 1 and len(central.batches) >= 3, 20, "first batches")
        req.request(Topics(topic_root).command("gw-test"), "restart", b"restart-1")
        wait_for(lambda: b"restart-1" in req.replies, 10, "the restart's answer")
        assert req.replies[b"restart-1"].ok
        assert req.replies[b"restart-1"].result["mode"] == "exec"
        wait_for(lambda: births() >= 2, 30, "a second birth after the restart")
        assert proc.poll() is None  # the same process (pid) runs the new agent
        seen = len(central.batches)
        wait_for(lambda: len(central.batches) >= seen + 3, 20, "batches after the restart")
        states = [type(decode_status(p)).__name__ for p in central.on(status)]
        assert states[:3] == ["Birth", "Death", "Birth"], states
    finally:
        req.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        log.close()
    seqs = sorted({b.seq for b in central.batches})
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), "a batch seq is missing"
    text = (tmp_path / "agent.log").read_text()
    assert text.count('"edge agent started"') == 2
