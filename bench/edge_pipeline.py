"""Edge agent benchmark (run by hand): ``.venv/bin/python bench/edge_pipeline.py``.

Measures, each as the median of ``--repeat`` runs:

- ``samples_per_s``: the vectorised chain validity + deadband + Hampel + 10 s window aggregate
  over 1,000 channels (``edge_agent.Chain``), fed 10 one-second steps per call;
- ``naive_samples_per_s``: a per-sample Python loop doing the same work, same data, same run;
- ``rss_mb``: peak RSS of a real agent process started as deployed (``smartcity edge run``,
  the systemd unit's command) with 1,000 channels receiving 1,000 readings/s over local MQTT
  (peak over ``--rss-seconds``, median of ``--repeat`` runs); ``rss_mb_python_m``: the same
  started as ``python -m edge_agent run``;
- ``replay_readings_per_s``: an agent replaying a 100,000-reading spool backlog to a private
  mosquitto, from start until every batch is acknowledged (PUBACK) and deleted;
- ``checkpoint_ms``: median time to write one processor checkpoint of the same chain over
  1,000 channels (every stage's state, windows open): ``ChannelPipeline.checkpoint`` plus the
  spool transaction that commits it (``synchronous: full``, as deployed, in a temporary
  directory: the fsync cost is that of the disk under ``$TMPDIR``); ``checkpoint_bytes``: its
  size (the layout blob is written only when channels appear, and is not counted).

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import psutil
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent import Chain, ChannelPipeline, EdgeAgent, ProcessorRule, Spool, parse_config
from smartcity._localstack import Mosquitto
from telemetry import Batch, Reading, encode_batch

NS = 1_000_000_000
T0 = 1_750_000_000 * NS
CHANNELS = 1000
STAGES: list[dict[str, Any]] = [
    {"type": "validity", "min": -1000, "max": 1000},
    {"type": "deadband", "absolute": 0.5, "max_silence_s": 60},
    {"type": "hampel", "window": 7, "k": 3.0},
    {"type": "aggregate", "window_s": 10, "functions": ["mean", "min", "max", "count", "last"]},
]


def make_data(steps: int) -> np.ndarray:
    rng = np.random.default_rng(42)
    base = 20 + 5 * np.sin(np.arange(steps)[:, None] / 30 + np.arange(CHANNELS)[None, :])
    data = base + rng.normal(0, 0.3, (steps, CHANNELS))
    spikes = rng.random((steps, CHANNELS)) < 0.01
    data[spikes] += 200
    return data


def vectorised(data: np.ndarray, step_per_call: int = 10) -> float:
    rule = ProcessorRule.model_validate({"stages": STAGES})
    chain = Chain(list(rule.stages))
    for _ in range(CHANNELS):
        chain.add_channel()
    steps = data.shape[0]
    chan_block = np.tile(np.arange(CHANNELS, dtype=np.intp), step_per_call)
    t = time.perf_counter()
    for s in range(0, steps, step_per_call):
        block = data[s : s + step_per_call]
        k = block.shape[0]
        ts = T0 + np.repeat(np.arange(s, s + k, dtype=np.int64), CHANNELS) * NS
        chain.process(chan_block[: k * CHANNELS], ts, block.reshape(-1))
    chain.flush(0, force=True)
    return data.size / (time.perf_counter() - t)


def naive(data: np.ndarray) -> float:
    """The same chain, one sample at a time, in plain Python."""
    lo, hi, band, silence = -1000.0, 1000.0, 0.5, 60 * NS
    window, k = 7, 3.0 * 1.4826
    win_ns = 10 * NS
    last_v = [math.nan] * CHANNELS
    last_t = [0] * CHANNELS
    has = [False] * CHANNELS
    hist = [deque(maxlen=window) for _ in range(CHANNELS)]
    agg: list[list[float] | None] = [None] * CHANNELS
    wid = [0] * CHANNELS
    out = []
    rows = data.tolist()
    t = time.perf_counter()
    for step, row in enumerate(rows):
        ts = T0 + step * NS
        for c, v in enumerate(row):
            if not (lo <= v <= hi) or not math.isfinite(v):
                continue
            if has[c] and abs(v - last_v[c]) < band and ts - last_t[c] < silence:
                continue
            last_v[c], last_t[c], has[c] = v, ts, True
            h = hist[c]
            ok = True
            if len(h) == window:
                med = statistics.median(h)
                mad = statistics.median([abs(x - med) for x in h])
                ok = abs(v - med) <= k * mad
            h.append(v)
            if not ok:
                continue
            w = ts // win_ns
            a = agg[c]
            if a is not None and w > wid[c]:
                out.append((c, wid[c], a[0] / a[3], a[1], a[2], a[3], a[4]))
                a = None
            if a is None:
                agg[c] = a = [0.0, math.inf, -math.inf, 0, 0.0]
                wid[c] = w
            a[0] += v
            a[1] = min(a[1], v)
            a[2] = max(a[2], v)
            a[3] += 1
            a[4] = v
    return data.size / (time.perf_counter() - t)


def measure_checkpoint(workdir: Path, writes: int = 50) -> tuple[float, int]:
    """(median ms per checkpoint write, bytes per checkpoint) for 1,000 aggregating channels."""
    pipeline = ChannelPipeline([ProcessorRule.model_validate({"stages": STAGES})])
    data = make_data(5)
    for step, row in enumerate(data.tolist()):
        pipeline.ingest(
            [
                Reading(device=f"dev-{c}", measurement="Bench", ts=T0 + step * NS, fields={"v": v})
                for c, v in enumerate(row)
            ]
        )
        pipeline.tick(T0)
    times: list[float] = []
    size = 0
    with Spool(workdir / "ckpt.sqlite3", budget_bytes=2**30, synchronous="full") as spool:
        spool.commit([], pipeline.checkpoint(full=True))
        for _ in range(writes):
            t = time.perf_counter()
            blobs = pipeline.checkpoint()
            spool.commit([], blobs)
            times.append((time.perf_counter() - t) * 1000)
            size = sum(len(b) for b in blobs.values())
    return statistics.median(times), size


def agent_command(how: str) -> list[str]:
    """``smartcity``: the console script next to this interpreter (as the systemd unit runs
    it); ``module``: ``python -m edge_agent``."""
    script = Path(sys.executable).with_name("smartcity")
    if how == "smartcity" and script.exists():
        return [str(script), "edge"]
    return [sys.executable, "-m", "edge_agent"]


@contextlib.contextmanager
def telemetry_sink(broker: Mosquitto, root: str) -> Iterator[None]:
    """A QoS 0 subscriber to every gateway's telemetry. Without one the broker acknowledges
    batches with 0x10 (no subscriber) and the agent keeps and resends them, as it should."""
    sink = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-sink-{root}")
    subscribed = threading.Event()
    sink.on_subscribe = lambda *_a: subscribed.set()
    sink.connect("127.0.0.1", broker.port)
    sink.subscribe(f"{root}/v1/+/telemetry", qos=0)
    sink.loop_start()
    try:
        if not subscribed.wait(10):
            raise RuntimeError("telemetry sink did not subscribe")
        yield
    finally:
        sink.disconnect()
        sink.loop_stop()


def measure_rss(seconds: float, workdir: Path, how: str = "smartcity") -> float:
    with Mosquitto(data_dir=workdir / "mq-rss") as broker, telemetry_sink(broker, "benchrss"):
        root = "benchrss"
        cfg = {
            "gateway": {"id": "bench-rss", "state_dir": str(workdir / "rss-state")},
            "broker": {"host": "127.0.0.1", "port": broker.port, "topic_root": root},
            "inputs": [
                {
                    "type": "mqtt",
                    "name": "local",
                    "port": broker.port,
                    "subscriptions": [
                        {
                            "topic": "sensors/+/state",
                            "device": "{1}",
                            "measurement": "Bench",
                            "fields": {"v": "$.v"},
                        }
                    ],
                }
            ],
            "processors": [{"stages": STAGES}],
        }
        path = workdir / "rss.yaml"
        path.write_text(yaml.safe_dump(cfg))
        proc = subprocess.Popen(
            [*agent_command(how), "run", "--config", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-pub")
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        peak = 0
        try:
            ps = psutil.Process(proc.pid)
            time.sleep(2.0)
            start = time.monotonic()
            i = 0
            while time.monotonic() - start < seconds:
                tick = time.monotonic()
                for c in range(CHANNELS):  # 1,000 readings per second, one per channel
                    v = 20 + 5 * math.sin(i / 30 + c)
                    pub.publish(f"sensors/ch{c}/state", json.dumps({"v": v}), qos=1)
                i += 1
                peak = max(peak, ps.memory_info().rss)
                time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
            peak = max(peak, ps.memory_info().rss)
        finally:
            pub.disconnect()
            pub.loop_stop()
            proc.terminate()
            proc.wait(30)
    return peak / 2**20


def measure_replay(workdir: Path, n_readings: int = 100_000, per_batch: int = 500) -> float:
    with Mosquitto(data_dir=workdir / "mq-replay") as broker, telemetry_sink(broker, "benchreplay"):
        state = workdir / "replay-state"
        cfg = parse_config(
            {
                "gateway": {"id": "bench-replay", "state_dir": str(state)},
                "broker": {
                    "host": "127.0.0.1",
                    "port": broker.port,
                    "topic_root": "benchreplay",
                    "inflight_window": 64,
                },
                "spool": {"synchronous": "normal"},
            },
            source="bench",
        )
        with Spool(cfg.spool_path, budget_bytes=int(cfg.spool.budget_bytes)) as spool:
            for b in range(n_readings // per_batch):
                seq = spool.next_seq
                readings = [
                    Reading(
                        device=f"dev-{i % 100}",
                        measurement="Bench",
                        ts=T0 + (b * per_batch + i) * 1_000_000,
                        fields={"v": float(i), "w": i * 0.5},
                    )
                    for i in range(per_batch)
                ]
                payload = encode_batch(Batch(gateway="bench-replay", seq=seq, readings=readings))
                spool.append(seq, payload, per_batch)
        agent = EdgeAgent(cfg)

        async def run() -> float:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(agent.run(), name="bench-agent[replay].run")
                t = time.perf_counter()
                await agent.ready.wait()
                while agent.uplink.stats.acked_readings < n_readings:  # noqa: ASYNC110 - polls a counter
                    await asyncio.sleep(0.005)
                elapsed = time.perf_counter() - t
                agent.stop()
            return n_readings / elapsed

        rate = asyncio.run(run())
        (state / "spool.sqlite3").unlink()
        return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--steps", type=int, default=600, help="seconds of 1 Hz data per channel")
    ap.add_argument("--naive-steps", type=int, default=100)
    ap.add_argument("--rss-seconds", type=float, default=15.0)
    args = ap.parse_args()
    data = make_data(args.steps)
    vec = [vectorised(data) for _ in range(args.repeat)]
    nv = [naive(data[: args.naive_steps]) for _ in range(args.repeat)]
    print(f"vectorised samples/s: {[round(x) for x in vec]}", flush=True)
    print(f"naive samples/s:      {[round(x) for x in nv]}", flush=True)
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        work = Path(tmp)
        ckpt_ms, ckpt_bytes = measure_checkpoint(work)
        print(f"checkpoint ms:        {ckpt_ms:.2f} ({ckpt_bytes} bytes)", flush=True)
        replay = []
        for i in range(args.repeat):
            replay.append(measure_replay(work / f"r{i}"))
            print(f"replay readings/s:    {round(replay[-1])}", flush=True)
        rss, rss_m = [], []
        for i in range(args.repeat):
            rss.append(measure_rss(args.rss_seconds, work / f"s{i}", "smartcity"))
            rss_m.append(measure_rss(args.rss_seconds, work / f"m{i}", "module"))
            print(f"agent peak RSS MB:    {rss[-1]:.1f} (python -m: {rss_m[-1]:.1f})", flush=True)
    result = {
        "samples_per_s": round(statistics.median(vec)),
        "naive_samples_per_s": round(statistics.median(nv)),
        "speedup": round(statistics.median(vec) / statistics.median(nv), 1),
        "rss_mb": round(statistics.median(rss), 1),
        "rss_mb_python_m": round(statistics.median(rss_m), 1),
        "replay_readings_per_s": round(statistics.median(replay)),
        "checkpoint_ms": round(ckpt_ms, 2),
        "checkpoint_bytes": ckpt_bytes,
        "channels": CHANNELS,
        "repeat": args.repeat,
        "threading_active": threading.active_count(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
