"""The live-push part of bench/api.py: publish -> WebSocket latency against a bare subscriber.

::

    fleet process (1,000 gateways, 5,000 readings/s, each second's batches in one burst) ─┐
    probe (this process, paho): one reading every 20 ms carrying its send time ───────────┤
                                                                                          ▼
                                                                                      mosquitto
        ┌───────────────────────────────┬───────────────────────────────────────────────┤
        ▼                               ▼                                               ▼
    API (its own process) ─▶ WebSocket  bare paho subscriber        --bare-all: bare paho
    ?device=probe: live_p50/p99         (probe topic): the ceiling  subscriber to all telemetry

Imported by bench/api.py (run as a script, its directory is on ``sys.path``); imports the
project only inside functions, after bench/api.py has fixed ``sys.path``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np
from _api_parts import BARE_SUBSCRIBER, FLEET, ROOT, breakdown, counter, scrape


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q)) if values else float("nan")


def _bare_subscriber(port: int, topic: str, probe: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", BARE_SUBSCRIBER, str(port), topic, probe],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise SystemExit("the bare subscriber did not start")
    return proc


def _bare_result(proc: subprocess.Popen[str]) -> list[float]:
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    result: list[float] = json.loads(proc.stdout.readline())
    return result


def live(
    api_url: str, key: str, broker: Any, seconds: float, *, bare_all: bool = False
) -> tuple[list[float], int, list[float], list[float]]:
    """Probe latencies through the API, probes sent, and the bare subscribers' latencies."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from websockets.sync.client import connect

    from telemetry import Batch, Reading, TopicKind, Topics, encode_batch

    fleet = subprocess.Popen(
        [sys.executable, "-c", FLEET, ROOT, str(broker.port), str(seconds + 10)]
    )
    latencies: list[float] = []
    topics = Topics(ROOT)
    probe_topic = topics.telemetry("probe-gw")
    bares = [_bare_subscriber(broker.port, probe_topic, probe_topic)]
    if bare_all:
        bares.append(
            _bare_subscriber(broker.port, topics.all_gateways(TopicKind.TELEMETRY), probe_topic)
        )
    bare_latencies: list[float] = []
    bare_all_latencies: list[float] = []
    try:
        time.sleep(4)  # births, first ticks
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        client.connect(broker.host, broker.port)
        client.loop_start()
        url = api_url.replace("http://", "ws://") + "/v1/stream/ws?device=probe"
        sent = 0
        with connect(url, additional_headers={"X-API-Key": key}, max_queue=None) as ws:
            json.loads(ws.recv(timeout=5))
            done = threading.Event()

            def receive() -> None:
                while not done.is_set():
                    try:
                        event = json.loads(ws.recv(timeout=1))
                    except TimeoutError:
                        continue
                    if event.get("type") == "reading":
                        now = time.time_ns()
                        latencies.append((now - event["reading"]["fields"]["sent"]) / 1e6)

            thread = threading.Thread(target=receive, daemon=True)
            thread.start()
            stop = time.monotonic() + seconds
            seq = 0
            while time.monotonic() < stop:
                ts = time.time_ns()
                batch = Batch(
                    gateway="probe-gw",
                    seq=seq,
                    readings=[
                        Reading(device="probe", measurement="Probe", ts=ts, fields={"sent": ts})
                    ],
                )
                client.publish(probe_topic, encode_batch(batch), qos=0)
                seq += 1
                sent += 1
                time.sleep(0.02)
            time.sleep(1)
            done.set()
            thread.join(3)
        client.disconnect()
        client.loop_stop()
        bare_latencies = _bare_result(bares[0])
        if bare_all:
            bare_all_latencies = _bare_result(bares[1])
    finally:
        fleet.terminate()
        fleet.wait(30)
        for bare in bares:
            bare.kill()
            bare.wait(30)
    return latencies, sent, bare_latencies, bare_all_latencies


def measure_live(
    url: str, key: str, broker: Any, seconds: float, *, bare_all: bool
) -> dict[str, Any]:
    """Run :func:`live`, print its lines and return the last line's live keys."""
    before = scrape(url, key)
    t = time.perf_counter()
    lat, probes, bare_lat, bare_all_lat = live(url, key, broker, seconds, bare_all=bare_all)
    metrics = scrape(url, key)
    spent = breakdown(before, metrics, time.perf_counter() - t)
    print(
        f"live: {len(lat)}/{probes} probes, p50 {pct(lat, 50):.2f} ms, "
        f"p99 {pct(lat, 99):.2f} ms; bare subscriber p50 {pct(bare_lat, 50):.2f} ms, "
        f"p99 {pct(bare_lat, 99):.2f} ms (ratio {pct(lat, 99) / pct(bare_lat, 99):.2f})",
        flush=True,
    )
    if bare_all:
        print(
            f"bare subscriber to all telemetry: p50 {pct(bare_all_lat, 50):.2f} ms, "
            f"p99 {pct(bare_all_lat, 99):.2f} ms",
            flush=True,
        )
    print(f"live breakdown: {json.dumps(spent)}", flush=True)
    return {
        "live_p50_ms": round(pct(lat, 50), 3),
        "live_p99_ms": round(pct(lat, 99), 3),
        "live_bare_p50_ms": round(pct(bare_lat, 50), 3),
        "live_bare_p99_ms": round(pct(bare_lat, 99), 3),
        "live_p99_ratio_to_bare": round(pct(lat, 99) / pct(bare_lat, 99), 3),
        "live_breakdown": spent,
        **(
            {
                "live_bare_all_p50_ms": round(pct(bare_all_lat, 50), 3),
                "live_bare_all_p99_ms": round(pct(bare_all_lat, 99), 3),
                "live_p99_ratio_to_bare_all": round(pct(lat, 99) / pct(bare_all_lat, 99), 3),
            }
            if bare_all
            else {}
        ),
        "live_probes_received": len(lat),
        "live_probes_sent": probes,
        "api_readings_applied": counter(metrics, "smartcity_api_readings_total"),
    }
