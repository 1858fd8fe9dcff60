"""Benchmark: decode + validate telemetry batches, and encode readings to line protocol.

Payloads are realistic: 100-reading batches from 200 gateways mixing traffic, vehicle,
air-quality, parking and energy readings, 2,000 devices in all. The same payloads decoded
by stdlib ``json.loads`` (no validation, no typed objects) are the same-run reference.
Each figure is the median of several rounds; the last line printed is one JSON object.

    .venv/bin/python bench/codec.py [--rounds 7] [--batches 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable

from telemetry import (
    TS_MIN_NS,
    Batch,
    LineProtocolEncoder,
    Reading,
    decode_batch,
    encode_batch,
)

READINGS_PER_BATCH = 100


def make_reading(rng: random.Random, device: int, ts: int) -> Reading:
    kind = device % 5
    d = f"dev-{device:05d}"
    if kind == 0:
        return Reading(
            device=d,
            measurement="TrafficFlowObserved",
            ts=ts,
            fields={
                "intensity": rng.uniform(0, 1800),
                "averageVehicleSpeed": rng.uniform(5, 70),
                "occupancy": rng.random(),
                "vehicleCount": rng.randrange(0, 40),
            },
            tags={"lane": str(device % 3)},
        )
    if kind == 1:
        return Reading(
            device=d,
            measurement="Vehicle",
            ts=ts,
            fields={
                "latitude": 59.9 + rng.random() / 10,
                "longitude": 10.7 + rng.random() / 10,
                "speed": rng.uniform(0, 60),
                "heading": rng.uniform(0, 360),
                "passengerCount": rng.randrange(0, 80),
            },
        )
    if kind == 2:
        return Reading(
            device=d,
            measurement="AirQualityObserved",
            ts=ts,
            fields={
                "pm25": rng.uniform(2, 60),
                "pm10": rng.uniform(5, 90),
                "no2": rng.uniform(5, 80),
            },
        )
    if kind == 3:
        total = 400
        free = rng.randrange(0, total)
        return Reading(
            device=d,
            measurement="OffStreetParking",
            ts=ts,
            fields={"availableSpotNumber": free, "totalSpotNumber": total},
        )
    return Reading(
        device=d,
        measurement="ThreePhaseAcMeasurement",
        ts=ts,
        fields={"activePower": rng.uniform(0, 5e4), "totalActiveEnergyImport": rng.uniform(0, 1e6)},
        quality="uncertain" if rng.random() < 0.01 else "good",
    )


def make_batches(n: int, seed: int = 7) -> list[Batch]:
    rng = random.Random(seed)
    t0 = TS_MIN_NS + 790_000_000 * 10**9
    batches = []
    for b in range(n):
        gateway = b % 200
        base = gateway * 10
        readings = [
            make_reading(rng, base + (i % 10), t0 + b * 10**9 + i * 10**6)
            for i in range(READINGS_PER_BATCH)
        ]
        batches.append(Batch(gateway=f"gw-{gateway:04d}", seq=b, readings=readings))
    return batches


def rate(fn: Callable[[], None], readings: int, rounds: int) -> float:
    fn()  # warm caches and the allocator
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        samples.append(readings / (time.perf_counter() - t0))
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batches", type=int, default=2000)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core

    batches = make_batches(args.batches)
    payloads = [encode_batch(b) for b in batches]
    total = len(batches) * READINGS_PER_BATCH
    decoded = [decode_batch(p) for p in payloads]
    assert decoded == batches, "codec round trip failed"

    def decode_all() -> None:
        for p in payloads:
            decode_batch(p)

    def stdlib_all() -> None:
        for p in payloads:
            json.loads(p)

    encoder = LineProtocolEncoder()

    def encode_all() -> None:
        for b in decoded:
            encoder.encode(b.gateway, b.readings)

    decode_rate = rate(decode_all, total, args.rounds)
    stdlib_rate = rate(stdlib_all, total, args.rounds)
    encode_rate = rate(encode_all, total, args.rounds)
    mean_payload = sum(map(len, payloads)) / len(payloads)
    print(
        f"payloads: {len(payloads)} x {READINGS_PER_BATCH} readings, "
        f"{mean_payload:.0f} bytes each ({mean_payload / READINGS_PER_BATCH:.0f} B/reading)",
        file=sys.stderr,
    )
    print(
        json.dumps(
            {
                "decode_readings_per_s": round(decode_rate),
                "encode_readings_per_s": round(encode_rate),
                "stdlib_json_decode_readings_per_s": round(stdlib_rate),
                "decode_vs_stdlib_ratio": round(decode_rate / stdlib_rate, 3),
                "bytes_per_reading": round(mean_payload / READINGS_PER_BATCH, 1),
                "readings": total,
                "rounds": args.rounds,
                "statistic": "median",
            }
        )
    )


if __name__ == "__main__":
    main()
