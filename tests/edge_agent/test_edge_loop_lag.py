"""The edge agent's event-loop lag on its local /metrics (issue 17): a real agent process whose
loop is blocked once (the debug hook) shows that stall in ``edge_event_loop_lag_seconds``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from edge_agent._looplag import LoopLagHistogram
from smartcity._localstack import free_port

SMARTCITY = str(Path(sys.executable).with_name("smartcity"))


@pytest.fixture
def short_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="sc-", dir="/tmp") as d:
        yield Path(d)


def lag_samples(port: int) -> dict[str, float]:
    """The loop-lag histogram's samples by name (+ ``le``), or {} if not answering yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except (urllib.error.URLError, OSError):
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "edge_event_loop_lag_seconds":
            continue
        for s in family.samples:
            assert s.labels["gateway"] == "gw-lag"
            le = s.labels.get("le")
            out[s.name + (f"{{le={le}}}" if le else "")] = s.value
    return out


def wait_for(
    port: int, what: str, ok: Callable[[dict[str, float]], bool], timeout: float = 30.0
) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    seen: dict[str, float] = {}
    while time.monotonic() < deadline:
        seen = lag_samples(port)
        if ok(seen):
            return seen
        time.sleep(0.2)
    raise AssertionError(f"{what}: {seen}")


def test_the_histogram_counts_into_prometheus_buckets() -> None:
    h = LoopLagHistogram()
    for lag in (0.0, 0.0005, 0.001, 0.003, 2.0, 9.0):
        h.observe(lag)
    assert h.count == 6
    fam = h.metric("gw")
    buckets = {s.labels["le"]: s.value for s in fam.samples if s.name.endswith("_bucket")}
    assert buckets["0.001"] == 3  # le is inclusive: 0.001 counts in the 0.001 bucket
    assert buckets["0.005"] == 4
    assert buckets["1.0"] == 4
    assert buckets["2.5"] == 5
    assert buckets["+Inf"] == 6
    total = next(s.value for s in fam.samples if s.name.endswith("_sum"))
    assert total == pytest.approx(11.0045)


@pytest.mark.integration
def test_a_stalled_agent_loop_shows_on_its_metrics(short_dir: Path) -> None:
    port = free_port()
    data = {
        "gateway": {"id": "gw-lag", "state_dir": str(short_dir / "state")},
        "broker": {"host": "127.0.0.1", "port": free_port()},  # nothing there: uplink down
        "metrics": {"host": "127.0.0.1", "port": port},
        "inputs": [{"type": "simulated", "name": "sim", "devices": 1}],
    }
    path = short_dir / "edge.yaml"
    path.write_text(yaml.safe_dump(data))
    log = (short_dir / "agent.log").open("ab")
    proc = subprocess.Popen(
        [SMARTCITY, "edge", "run", "--config", str(path), "--log-format", "json"],
        stdout=log, stderr=log, cwd="/",
        # 3 s after start, block the loop for 1.5 s.
        env={**os.environ, "SMARTCITY_EDGE_DEBUG_STALL": "3:1.5"},
    )
    try:
        before = wait_for(
            port, "no loop-lag samples",
            lambda s: s.get("edge_event_loop_lag_seconds_count", 0) >= 5,
        )
        # Before the stall every probe woke within a second.
        assert before["edge_event_loop_lag_seconds_bucket{le=1.0}"] == (
            before["edge_event_loop_lag_seconds_count"]
        )
        after = wait_for(
            port, "the stall did not show",
            lambda s: s.get("edge_event_loop_lag_seconds_count", 0)
            > s.get("edge_event_loop_lag_seconds_bucket{le=1.0}", 0),
        )
        # One probe was woken about 1.5 s late (the blocked loop), counted above 1 s.
        late = (after["edge_event_loop_lag_seconds_count"]
                - after["edge_event_loop_lag_seconds_bucket{le=1.0}"])
        assert late == 1
        assert after["edge_event_loop_lag_seconds_bucket{le=2.5}"] == (
            after["edge_event_loop_lag_seconds_count"]
        )
        assert 1.3 <= after["edge_event_loop_lag_seconds_sum"] < 5.0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    assert "debug: blocking the event loop" in (short_dir / "agent.log").read_text()
