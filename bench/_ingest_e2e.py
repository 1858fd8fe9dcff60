"""One end-to-end phase of the ingest benchmark: a worker process of a checkout, fed by the
raw publisher, timed to its last confirmed write, with every process's CPU per reading.

Imported by bench/ingest.py (run as a script, its directory is on ``sys.path``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

from _ingest_ceilings import PYTHON, ROOT
from _ingest_publisher import Publisher, purge_session

from smartcity._localstack import Influxd, Mosquitto, free_port

__all__ = ["bench_end_to_end", "cpu_seconds"]

REPO = Path(__file__).resolve().parent.parent


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of process ``pid`` so far (0.0 if unknown or gone)."""
    if pid is None:
        return 0.0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()  # after the command name: field 3 onwards
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def _metric(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def bench_end_to_end(
    mq: Mosquitto,
    ix: Influxd,
    db: str,
    messages: list[tuple[str, bytes]],
    expected: int,
    args: argparse.Namespace,
    tmp: Path,
    repo: Path = REPO,
) -> dict[str, float]:
    """Publish through a worker process (run from the checkout ``repo``); return rate, lost,
    duplicates."""
    metrics_port = free_port()
    config = tmp / f"ingest-{db}.yaml"
    config.write_text(
        json.dumps(
            {
                # A group per phase: an earlier phase's stopped worker keeps a persistent
                # session in its group and would still be dealt its share.
                "mqtt": {
                    "port": mq.port,
                    "topic_root": ROOT,
                    "client_id": f"bench-{db}",
                    "group": db,
                    "receive_maximum": args.receive_maximum,
                },
                "influx": {"url": ix.url, "database": db},
                "batch": {
                    "max_readings": args.batch_size,
                    "max_concurrent_writes": args.concurrency,
                },
                "metrics_port": metrics_port,
                "log_level": "WARNING",
            }
        )
    )
    profile = (
        []
        if args.profile is None
        else ["-m", "cProfile", "-o", str(Path(args.profile).resolve() / f"worker-{db}.prof")]
    )
    worker = subprocess.Popen(
        [PYTHON, *profile, "-m", "ingest", "run", "--config", str(config)],
        cwd=repo,
        stderr=open(tmp / f"worker-{db}.log", "wb"),  # noqa: SIM115
    )
    try:
        deadline = time.monotonic() + 60
        while _metric(metrics_port, "smartcity_ingest_broker_connected") != 1.0:
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start; see {tmp}/worker-{db}.log")
            time.sleep(0.1)
        time.sleep(0.5)  # the SUBACK follows the CONNACK
        pub = Publisher(mq.port)
        pids = {"worker": worker.pid, "influxd": ix.pid, "broker": mq.pid}
        try:
            cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
            cpu0["publisher"] = own_cpu_seconds()
            start = pub.publish_all(messages)
            deadline = time.monotonic() + 600
            written = 0.0
            while written < expected and time.monotonic() < deadline:
                # Polling /metrics costs the worker (and this process) CPU: poll at about half
                # the time the rest should take at the rate so far, every 50 ms near the end.
                elapsed = time.monotonic() - start
                left = (expected - written) * elapsed / written if written else 1.0
                time.sleep(min(1.0, max(0.05, left / 2)))
                written = _metric(metrics_port, "smartcity_ingest_readings_written_total") or 0
            end = time.monotonic()
            cpu = {name: cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
            cpu["publisher"] = own_cpu_seconds() - cpu0["publisher"]
            pub.done.wait(30)
        finally:
            pub.close()
        answer = ix.query('SELECT count("intensity") FROM "TrafficFlowObserved"', db=db)
        series = answer["results"][0].get("series")
        stored = int(series[0]["values"][0][1]) if series else 0
        return {
            "seconds": end - start,
            "rate": expected / (end - start),
            "lost": max(0, expected - stored),
            "duplicates": max(0, stored - expected),
            "rewritten": max(0.0, written - expected),
            "worker_busy": cpu["worker"] / (end - start),
            **{f"cpu_us_per_reading_{name}": v * 1e6 / expected for name, v in cpu.items()},
        }
    finally:
        worker.terminate()
        worker.wait(30)
        purge_session(mq.port, f"bench-{db}")
