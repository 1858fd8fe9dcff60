"""Processor state across SIGKILL, SIGTERM and config changes: real agent processes reading a
device over a real local mosquitto, records checked at the central broker.

Samples carry device timestamps in an aggregation window that starts a few minutes in the
future, so the gateway clock never closes it during a test: it closes when the device sends
a sample of the next window, and the test knows exactly which samples belong to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import paho.mqtt.client as mqtt
import pytest
import yaml
from edge_helpers import Central, await_until, base_config, make_config, running, wait_until
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent import EdgeAgent, Spool
from smartcity._localstack import Mosquitto
from telemetry import ConfigDesired, Reading, encode_message

NS = 1_000_000_000
MS = 1_000_000
WINDOW_S = 60
AGG: dict[str, Any] = {
    "type": "aggregate",
    "window_s": WINDOW_S,
    "functions": ["mean", "count", "min", "max"],
}


def future_window() -> int:
    """Start (ns) of a window at least two windows ahead of the gateway clock."""
    return (time.time_ns() // (WINDOW_S * NS) + 3) * WINDOW_S * NS


def agent_config(
    tmp_path: Path, broker: Mosquitto, root: str, stages: list[dict[str, Any]]
) -> dict[str, Any]:
    data = base_config(tmp_path, broker, root)
    data["inputs"] = [
        {
            "type": "mqtt",
            "name": "local",
            "port": broker.port,
            "client_id": f"in-{root}",
            "subscriptions": [
                {
                    "topic": f"{root}/local/+/reading",
                    "device": "{2}",
                    "measurement": "Test",
                    "fields": {"v": "$.v"},
                    "timestamp": "$.t",
                }
            ],
        }
    ]
    data["processors"] = [{"stages": stages}]
    return data


class AgentProcess:
    """``python -m edge_agent run`` on a config file, restartable, logging to one file."""

    def __init__(self, tmp_path: Path, data: dict[str, Any]) -> None:
        self.config = tmp_path / "edge.yaml"
        self.log_path = tmp_path / "agent.log"
        self.write(data)
        self.proc: subprocess.Popen[bytes] | None = None

    def write(self, data: dict[str, Any]) -> None:
        self.config.write_text(yaml.safe_dump(data))

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edge_agent", "run", "--config", str(self.config)],
                stdout=log,
                stderr=log,
            )

    def signal(self, sig: signal.Signals) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        rc = self.proc.wait(30)
        self.proc = None
        return rc

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Device:
    """A sensor publishing ``{"v": value, "t": ns}`` to the local broker (QoS 1)."""

    def __init__(self, broker: Mosquitto, root: str, name: str = "dev-1") -> None:
        self.topic = f"{root}/local/{name}/reading"
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{root}-{name}")
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def send(self, v: float, t: int) -> None:
        payload = json.dumps({"v": v, "t": t}).encode()
        self.client.publish(self.topic, payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def saved_count(tmp_path: Path) -> int:
    """Samples in the open window of the first channel, as the agent's last commit saved it."""
    path = tmp_path / "state" / "spool.sqlite3"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        row = db.execute("SELECT value FROM state WHERE key = 'processors.arrays'").fetchone()
    if row is None:
        return 0
    dtype, _shape, data = msgspec.msgpack.decode(row[0][4:])["chains"][0][-1]["count"]
    counts = np.frombuffer(data, dtype=dtype)
    return int(counts[0]) if counts.shape[0] else 0


def records(central: Central, ts: int, device: str = "dev-1") -> list[Reading]:
    with central.lock:
        return [r for b in central.batches for r in b.readings if r.device == device and r.ts == ts]


def _restart_mid_window(
    sig: signal.Signals,
    broker: Mosquitto,
    root: str,
    tmp_path: Path,
    central: Central,
    *,
    total: int = 800,
    kill_at: int = 350,
) -> tuple[list[Reading], AgentProcess]:
    """Stream ``total`` samples into one window; ``sig`` the agent after ``kill_at`` were sent
    (the device keeps sending), restart it, close the window with a sample of the next one."""
    agent = AgentProcess(tmp_path, agent_config(tmp_path, broker, root, [AGG]))
    dev = Device(broker, root)
    w = future_window()
    status = f"{root}/v1/gw-test/status"
    reached = threading.Event()
    try:
        agent.start()
        wait_until(lambda: bool(central.on(status)), 20, "birth")

        def stream() -> None:
            for i in range(total):
                dev.send(float(i), w + i * MS)
                if i == kill_at:
                    reached.set()
                time.sleep(0.002)

        sender = threading.Thread(target=stream, name="device")
        sender.start()
        assert reached.wait(30)
        rc = agent.signal(sig)
        assert rc == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
        agent.start()
        sender.join(60)
        assert not sender.is_alive()
        dev.send(-1.0, w + WINDOW_S * NS)  # next window: closes ours
        wait_until(lambda: bool(records(central, w)), 30, "the window's record")
        time.sleep(1.0)  # a second record would show up by now
        assert agent.signal(signal.SIGTERM) == 0
    finally:
        dev.close()
        agent.close()
    return records(central, w), agent


@pytest.mark.integration
def test_sigkill_mid_window_the_window_counts_samples_before_and_after(
    mosquitto: Mosquitto, topic_root: str, tmp_path: Path, central_factory: Callable[..., Central]
) -> None:
    central = central_factory(mosquitto, topic_root)
    total = 800
    got, agent = _restart_mid_window(signal.SIGKILL, mosquitto, topic_root, tmp_path, central)
    assert len(got) == 1, got
    f = got[0].fields
    assert (f["v_min"], f["v_max"]) == (0.0, total - 1.0), "samples from before and after"
    # Every sample committed before the kill is in the checkpoint; the local broker redelivers
    # the rest (acks follow the commit), so nothing is lost. A kill between a commit and its
    # PUBACKs leaving the socket makes the broker redeliver that tick's messages, which then
    # count twice: at most one tick of messages (<= 250/s x tick 0.05 s; 50 with CPU load).
    assert total <= f["v_count"] <= total + 50, f
    assert "processor state restored (restart): 1 channels, 1 open windows" in agent.log()


@pytest.mark.integration
def test_sigterm_mid_window_gives_one_record_with_every_sample(
    mosquitto: Mosquitto, topic_root: str, tmp_path: Path, central_factory: Callable[..., Central]
) -> None:
    central = central_factory(mosquitto, topic_root)
    total = 800
    got, _ = _restart_mid_window(signal.SIGTERM, mosquitto, topic_root, tmp_path, central)
    assert len(got) == 1, "no early close at SIGTERM: one record for the window"
    f = got[0].fields
    assert f["v_count"] == total
    assert f["v"] == pytest.approx((total - 1) / 2)
    assert (f["v_min"], f["v_max"]) == (0.0, total - 1.0)


@pytest.mark.integration
def test_hampel_rejects_a_spike_right_after_a_sigkill_restart(
    mosquitto: Mosquitto, topic_root: str, tmp_path: Path, central_factory: Callable[..., Central]
) -> None:
    central = central_factory(mosquitto, topic_root)
    hampel = {"type": "hampel", "window": 7, "k": 3.0, "min_deviation": 0.5}
    agent = AgentProcess(tmp_path, agent_config(tmp_path, mosquitto, topic_root, [hampel]))
    dev = Device(mosquitto, topic_root)
    t0 = time.time_ns() // NS * NS
    try:
        agent.start()
        wait_until(lambda: bool(central.on(f"{topic_root}/v1/gw-test/status")), 20, "birth")
        for i in range(20):
            dev.send(20.0 + 0.1 * (i % 3), t0 + i * MS)
        # at the central broker means committed, and the Hampel window with it
        wait_until(lambda: len(central.readings()) == 20, 20, "20 normal samples")
        assert agent.signal(signal.SIGKILL) == -signal.SIGKILL
        agent.start()
        dev.send(500.0, t0 + 20 * MS)  # the first sample after the restart is a spike
        for i in range(21, 26):
            dev.send(20.0 + 0.1 * (i % 3), t0 + i * MS)
        wait_until(lambda: ("dev-1", t0 + 25 * MS, "Test") in central.readings(), 20, "last")
        assert agent.signal(signal.SIGTERM) == 0
    finally:
        dev.close()
        agent.close()
    got = {ts for _, ts, _ in central.readings()}
    assert t0 + 20 * MS not in got, "the spike passed the restarted Hampel filter"
    assert got == {t0 + i * MS for i in range(26) if i != 20}


@pytest.mark.integration
def test_edited_processor_config_closes_the_saved_window_early_and_says_so(
    mosquitto: Mosquitto, topic_root: str, tmp_path: Path, central_factory: Callable[..., Central]
) -> None:
    central = central_factory(mosquitto, topic_root)
    data = agent_config(tmp_path, mosquitto, topic_root, [AGG])
    agent = AgentProcess(tmp_path, data)
    dev = Device(mosquitto, topic_root)
    w = future_window()
    try:
        agent.start()
        wait_until(lambda: bool(central.on(f"{topic_root}/v1/gw-test/status")), 20, "birth")
        for i in range(100):
            dev.send(float(i), w + i * MS)
        wait_until(lambda: saved_count(tmp_path) == 100, 30, "100 samples checkpointed")
        assert agent.signal(signal.SIGTERM) == 0
        assert not records(central, w), "SIGTERM keeps the window open"
        data["processors"] = [{"stages": [{**AGG, "functions": ["mean", "count", "last"]}]}]
        agent.write(data)
        agent.start()
        # the saved window is closed at start with the old functions and its start timestamp
        wait_until(lambda: bool(records(central, w)), 20, "the early record")
        assert agent.signal(signal.SIGTERM) == 0
    finally:
        dev.close()
        agent.close()
    (rec,) = records(central, w)
    assert rec.fields == {"v": 49.5, "v_count": 100, "v_min": 0.0, "v_max": 99.0}
    log = agent.log()
    assert "processor config changed (restart): state of rule(s) [0] flushed" in log
    assert "1 open windows closed early" in log


def _feed(agent: EdgeAgent, w: int, start: int, n: int) -> None:
    agent.submit(
        [
            Reading(device="dev-1", measurement="Test", ts=w + i * MS, fields={"v": float(i)})
            for i in range(start, start + n)
        ],
        None,
    )


@pytest.mark.integration
def test_remote_config_keeps_unchanged_windows_and_closes_changed_ones(
    mosquitto: Mosquitto, topic_root: str, tmp_path: Path, central_factory: Callable[..., Central]
) -> None:
    central = central_factory(mosquitto, topic_root)
    data = base_config(tmp_path, mosquitto, topic_root)
    data["processors"] = [
        {"match": {"device": "dev-1"}, "stages": [AGG]},
        {"match": {"device": "dev-2"}, "stages": [AGG]},
    ]
    agent = EdgeAgent(make_config(data))
    desired = agent.topics.config_desired("gw-test")
    w = future_window()

    async def main() -> None:
        async with running(agent):
            await await_until(lambda: agent.uplink.connected, 10)
            _feed(agent, w, 0, 10)
            agent.submit(
                [Reading(device="dev-2", measurement="Test", ts=w, fields={"v": 1.0})], None
            )
            await asyncio.sleep(0.2)
            # version 2 changes only rule 1 (dev-2): dev-1's window carries on
            changed = dict(
                data,
                processors=[
                    data["processors"][0],
                    {**data["processors"][1], "stages": [{**AGG, "functions": ["max"]}]},
                ],
            )
            payload = encode_message(ConfigDesired(version=2, config=changed))
            await asyncio.to_thread(central.publish, desired, payload, retain=True)
            await await_until(lambda: agent.config_version == 2, 10, "applied")
            await await_until(lambda: bool(records(central, w, "dev-2")), 10, "dev-2 closed")
            assert not records(central, w, "dev-1")
            _feed(agent, w, 10, 10)
            _feed(agent, w + WINDOW_S * NS, 0, 1)  # closes dev-1's window
            await await_until(lambda: bool(records(central, w, "dev-1")), 10, "dev-1 closed")
        await asyncio.to_thread(central.publish, desired, b"", retain=True)

    asyncio.run(main())
    (one,) = records(central, w, "dev-1")
    assert one.fields["v_count"] == 20
    (two,) = records(central, w, "dev-2")
    assert two.fields["v_count"] == 1
    assert agent.checkpoints.closed_windows == 1


@pytest.mark.integration
def test_corrupt_checkpoint_is_ignored_counted_and_logged(
    mosquitto: Mosquitto,
    topic_root: str,
    tmp_path: Path,
    central_factory: Callable[..., Central],
    caplog: pytest.LogCaptureFixture,
) -> None:
    central = central_factory(mosquitto, topic_root)
    data = base_config(tmp_path, mosquitto, topic_root)
    data["processors"] = [{"stages": [AGG]}]
    cfg = make_config(data)
    with Spool(cfg.spool_path, budget_bytes=10**6) as spool:
        spool.commit(
            [],
            {
                "processors.layout": b"\x93not a layout",
                "processors.arrays": b"\xc1",
                "batcher.pending": b'[{"d": 1',
            },
        )
    agent = EdgeAgent(cfg)
    w = future_window()

    async def main() -> None:
        async with running(agent):
            await await_until(lambda: agent.uplink.connected, 10)
            _feed(agent, w, 0, 5)
            _feed(agent, w + WINDOW_S * NS, 0, 1)
            await await_until(lambda: bool(records(central, w)), 10, "a record")

    with caplog.at_level(logging.WARNING, logger="edge_agent"):
        asyncio.run(main())
    assert agent.checkpoints.ignored == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith("saved processor checkpoint ignored") for m in warnings), warnings
    assert any(m.startswith("saved unsealed readings ignored") for m in warnings), warnings
    assert records(central, w)[0].fields["v_count"] == 5
    # the agent wrote a good checkpoint over the bad one: the next start restores it
    with Spool(cfg.spool_path, budget_bytes=10**6) as spool:
        again = EdgeAgent(cfg)
        report = again.pipeline.restore(spool.load_state(), time.time_ns())
    assert report.open_windows == 1  # the next window, opened by the closing sample


@pytest.mark.integration
@pytest.mark.parametrize(("interval_s", "most"), [(0.5, 8), (0.0, None)])
def test_checkpoints_are_committed_at_most_once_per_interval(
    mosquitto: Mosquitto, topic_root: str, tmp_path: Path, interval_s: float, most: int | None
) -> None:
    """Samples arrive every tick (50 ms) for 2 s into an open window: with the default-like
    interval the spool sees a commit per interval, not one per tick (fsyncs on SD cards)."""
    data = base_config(tmp_path, mosquitto, topic_root)
    data["spool"] = {"checkpoint_interval_s": interval_s}
    data["processors"] = [{"match": {"device": "dev-1"}, "stages": [AGG]}]
    agent = EdgeAgent(make_config(data))
    w = future_window()

    async def main() -> int:
        async with running(agent):
            before = agent.checkpoints.written
            for i in range(40):
                _feed(agent, w, i, 1)
                await asyncio.sleep(0.05)
            return agent.checkpoints.written - before

    commits = asyncio.run(main())
    if most is not None:
        assert 2 <= commits <= most, commits
    else:
        assert commits >= 25, commits  # about one per tick
