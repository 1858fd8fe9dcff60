"""Benchmark: the simulated city, in process and onto a real mosquitto.

1. **generation** (no I/O): readings computed per second for the ``load-1000`` scenario
   (10,000 devices, every device reports every step; loop detectors report per lane), by the
   vectorised :class:`simulators.City`, against a same-run reference: a per-sensor Python
   loop computing the same loop-detector model with ``math`` and ``random``.
2. **rendering**: readings per second turned into wire batches (JSON, grouped per gateway).
3. **publishing**: 1,000 gateways from one process, each with its own MQTT connection, QoS 1,
   as fast as the broker acknowledges (scenario speed 0), to a private mosquitto
   (``smartcity._localstack.Mosquitto``); acknowledged readings per second.

Run by hand: ``.venv/bin/python bench/simulator.py [--publish-seconds 20] [--repeats 5]``.
The last line is one JSON object; figures are medians over the repeats.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from simulators import City, FleetConfig, GatewayFleet, load_scenario
from smartcity._localstack import Mosquitto


def bench_generation(repeats: int, steps: int) -> tuple[float, int, int]:
    scenario = load_scenario("load-1000")
    city = City(scenario)
    t0 = scenario.start_ns()
    tick = round(scenario.tick_s * 1e9)
    city.step(t0)
    rates = []
    k = 1
    readings = 0
    for _ in range(repeats):
        start = time.perf_counter()
        readings = 0
        for _ in range(steps):
            readings += city.step(t0 + k * tick).readings()
            k += 1
        rates.append(readings / (time.perf_counter() - start))
    sensors = sum(x.sensors for x in city.layout.kinds.values())
    return statistics.median(rates), sensors, readings // steps


def bench_reference_loop(repeats: int, steps: int) -> float:
    """The loop-detector model, one sensor lane at a time, in plain Python."""
    scenario = load_scenario("load-1000")
    city = City(scenario)
    roads = city.layout.roads
    loops = city.layout.kinds["loop"]
    link = np.asarray(loops.attrs["link"])[loops.row_sensor].tolist()
    lanes = np.asarray(loops.attrs["row_lane"]).tolist()
    weight = roads.link_weight.tolist()
    free = roads.link_free_speed.tolist()
    rng = random.Random(1)
    noise = [0.0] * roads.links
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        n = 0
        for step in range(steps):
            hour = (7.0 + step / 360.0) % 24
            demand = 0.08 + 0.92 * math.exp(-(((hour - 8.0) / 1.2) ** 2))
            for i in range(len(noise)):
                noise[i] = 0.99 * noise[i] + 0.14 * rng.gauss(0, 1)
            for li, lane in zip(link, lanes, strict=True):
                x = min(max(weight[li] * demand * (1 + 0.08 * noise[li]), 0.0), 1.5)
                occ = min(max(0.62 * x**1.6 + 0.01, 0.003), 0.92) * (0.85 + 0.1 * lane)
                speed = max(free[li] * (1 - occ / 0.95) ** 1.1 + 1.5 * rng.gauss(0, 1), 3.0)
                count = occ / 0.0065 * speed / 60.0
                _ = (count * 60.0, speed, occ, 3600.0 / max(count * 60.0, 1e-9), round(count))
                n += 1
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


def bench_rendering(repeats: int, steps: int) -> float:
    fleet = GatewayFleet(FleetConfig(scenario=load_scenario("load-1000")))
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        n = 0
        for _ in range(steps):
            n += sum(len(b.readings) for b in fleet.step())
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


def bench_publish(seconds: float, repeats: int) -> dict[str, float]:
    rates = []
    gateways = 0
    online = 0
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(data_dir=Path(tmp)) as broker:
        for r in range(repeats):
            fleet = GatewayFleet(
                FleetConfig(
                    scenario=load_scenario("load-1000"),
                    host=broker.host,
                    port=broker.port,
                    topic_root=f"bench{r}",
                    client_prefix=f"b{r}",
                )
            )
            gateways = fleet.layout.gateways
            marks: list[tuple[float, int]] = []

            def mark(
                _stats: object,
                fleet: GatewayFleet = fleet,
                marks: list[tuple[float, int]] = marks,
            ) -> None:
                marks.append((time.monotonic(), fleet.ledger.readings))

            stats = fleet.run(seconds, progress=mark, progress_every_s=1.0)
            online = max(online, stats.connects)
            # Sustained rate: from the first progress mark (all connected) to the last.
            if len(marks) >= 2:
                (t_a, n_a), (t_b, n_b) = marks[0], marks[-1]
                rates.append((n_b - n_a) / (t_b - t_a))
    return {
        "published_readings_per_s": statistics.median(rates) if rates else 0.0,
        "gateways_simulated": gateways,
        "gateways_connected": online,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--publish-seconds", type=float, default=15.0)
    parser.add_argument("--publish-repeats", type=int, default=3)
    args = parser.parse_args()

    gen, sensors, per_step = bench_generation(args.repeats, args.steps)
    print(f"generation: {gen:,.0f} readings/s ({sensors} devices, {per_step} readings per step)")
    ref = bench_reference_loop(args.repeats, 3)
    print(f"reference per-sensor Python loop (loop detectors only): {ref:,.0f} readings/s")
    render = bench_rendering(args.repeats, max(3, args.steps // 4))
    print(f"generation + rendering to wire batches: {render:,.0f} readings/s")
    pub = bench_publish(args.publish_seconds, args.publish_repeats)
    print(
        f"publishing: {pub['published_readings_per_s']:,.0f} acknowledged readings/s from "
        f"{pub['gateways_simulated']} gateways ({pub['gateways_connected']} connected)"
    )
    result = {
        "generated_readings_per_s": round(gen),
        "sensors": sensors,
        "readings_per_step": per_step,
        "reference_python_loop_readings_per_s": round(ref),
        "speedup_vs_python_loop": round(gen / ref, 1),
        "rendered_readings_per_s": round(render),
        "gateways_simulated": pub["gateways_simulated"],
        "gateways_connected": pub["gateways_connected"],
        "published_readings_per_s": round(pub["published_readings_per_s"]),
        "repeats": args.repeats,
        "statistic": "median",
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
