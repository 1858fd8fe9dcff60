"""Faults with real processes: influxd down for 10 s, a worker SIGKILLed mid-stream."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from ingest_testkit import (
    Publisher,
    batch_payload,
    count_points,
    make_config,
    register_session,
    wait_for,
    worker_id,
)

from ingest import BOOKKEEPING_MEASUREMENT, WorkerThread
from smartcity._localstack import Influxd, Mosquitto, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _publish_stream(
    publisher: Publisher, gateways: int, seqs: range, per_batch: int, base_ts: int,
    pause: float = 0.0,
) -> None:
    for seq in seqs:
        for g in range(gateways):
            publisher.telemetry(f"gw-{g}", batch_payload(f"gw-{g}", g, seq, per_batch, base_ts))
        if pause:
            time.sleep(pause)
    publisher.flush()


def test_influxd_down_mid_stream_loses_nothing(
    mosquitto: Mosquitto, influxd_factory: Callable[[], Influxd], topic_root: str,
    publisher: Publisher, base_ts: int,
) -> None:
    server = influxd_factory()
    db = "outage"
    config = make_config(
        mosquitto, server, topic_root, db,
        mqtt={"receive_maximum": 40},
        batch={"max_readings": 400, "max_in_flight_readings": 800},
    )
    gateways, per_batch = 3, 20
    with WorkerThread(config) as running:
        worker = running.worker
        _publish_stream(publisher, gateways, range(30), per_batch, base_ts)
        wait_for(lambda: count_points(server, db) >= 30 * gateways * per_batch, 30, "part 1")
        server.stop()
        _publish_stream(publisher, gateways, range(30, 60), per_batch, base_ts, pause=0.05)
        time.sleep(6)  # the stream is published (4.5 s) and the in-flight bound reached
        taken = worker.stats()
        time.sleep(4)
        held = worker.stats()
        # The worker stopped taking messages: the broker holds them, nothing is acked.
        assert held.messages_received == taken.messages_received
        assert held.messages_received < 60 * gateways
        assert held.readings_written == 30 * gateways * per_batch
        assert held.write_retries > 0
        assert held.readings_in_flight <= 800 + 40 * per_batch
        server.start()
        _publish_stream(publisher, gateways, range(60, 80), per_batch, base_ts)
        expected = 80 * gateways * per_batch
        wait_for(lambda: count_points(server, db) >= expected, 60, "drain after outage")
    assert count_points(server, db) == expected


def _metric(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text: str = resp.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def _start_worker(config_path: Path, metrics_port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ingest", "run", "--config", str(config_path),
             "--metrics-port", str(metrics_port)],
            cwd=REPO, stderr=err, stdout=subprocess.DEVNULL,
        )
    wait_for(
        lambda: proc.poll() is not None
        or _metric(metrics_port, "smartcity_ingest_broker_connected") == 1.0,
        30, "worker process to connect",
    )
    assert proc.poll() is None, log.read_text()
    time.sleep(0.3)  # SUBACK follows CONNACK
    return proc


def test_worker_sigkilled_mid_stream_then_restarted_loses_and_doubles_nothing(
    mosquitto: Mosquitto, influxd: Influxd, topic_root: str, influx_db: str,
    publisher: Publisher, base_ts: int, tmp_path: Path,
) -> None:
    config_path = tmp_path / "ingest.yaml"
    config_path.write_text(
        json.dumps(
            {
                "mqtt": {"port": mosquitto.port, "topic_root": topic_root,
                         "client_id": worker_id(topic_root, 7), "group": f"g-{topic_root}",
                         "keepalive": 10},
                "influx": {"url": influxd.url, "database": influx_db},
                "batch": {"max_readings": 1000, "max_age": 0.2},
                "log_level": "INFO",
            }
        )
    )
    register_session(mosquitto, worker_id(topic_root, 7))
    log = tmp_path / "worker.log"
    gateways, batches, per_batch = 4, 150, 25
    expected = gateways * batches * per_batch
    port = free_port()
    first = _start_worker(config_path, port, log)
    try:
        stream = threading.Thread(
            target=_publish_stream,
            args=(publisher, gateways, range(batches), per_batch, base_ts, 0.01),
        )
        stream.start()
        wait_for(lambda: count_points(influxd, influx_db) >= expected // 5, 30, "some points")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        at_kill = count_points(influxd, influx_db)
        stream.join(60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert 0 < at_kill < expected, "the kill must land mid-stream"
    second = _start_worker(config_path, port, log)
    try:
        wait_for(lambda: count_points(influxd, influx_db) >= expected, 60, "redelivered rest")
        # Let any late duplicate land before counting.
        time.sleep(0.5)
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0, log.read_text()[-3000:]
    assert count_points(influxd, influx_db) == expected
    answer = influxd.query(
        f'SELECT count(distinct("seq")) FROM "{BOOKKEEPING_MEASUREMENT}" GROUP BY "gateway"',
        db=influx_db,
    )
    assert [s["values"][0][1] for s in answer["results"][0]["series"]] == [batches] * gateways
    assert "ingest worker stopped" in log.read_text()
    assert os.path.getsize(log) > 0


def test_a_worker_restarted_with_a_backlog_past_receive_maximum_starts_and_drains_it(
    mosquitto: Mosquitto, influxd: Influxd, topic_root: str, influx_db: str,
    publisher: Publisher, base_ts: int,
) -> None:
    """The queued messages come right after CONNACK, ahead of the SUBACK: a session that
    stopped reading at its buffer limit before taking them would never see the SUBACK (it
    read on only every keepalive/2 = 30 s here, as long as the worker waits to subscribe)."""
    config = make_config(
        mosquitto, influxd, topic_root, influx_db, mqtt={"receive_maximum": 20, "keepalive": 60}
    )
    with WorkerThread(config):
        pass  # the persistent session and its shared subscription now exist
    batches, per_batch = 200, 5
    for seq in range(batches):
        publisher.telemetry("gw-0", batch_payload("gw-0", 0, seq, per_batch, base_ts))
    publisher.flush()  # PUBACKed: queued in the offline session
    started = time.monotonic()
    with WorkerThread(config) as running:
        wait_for(
            lambda: count_points(influxd, influx_db) >= batches * per_batch, 30, "the backlog"
        )
        elapsed = time.monotonic() - started
        wait_for(lambda: running.worker.stats().messages_in_flight == 0, 10, "all acked")
    assert count_points(influxd, influx_db) == batches * per_batch
    assert elapsed < 20, elapsed
