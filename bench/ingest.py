"""Ingest benchmark: end-to-end readings/s through mosquitto, an ingest worker and influxd.

Run by hand (not part of the tests)::

    .venv/bin/python bench/ingest.py [--readings 1000000] [--gateways 50] [--repeat 3]

It starts its own mosquitto and influxd (smartcity._localstack) on free loopback ports and,
in one run, measures:

1. ``influx_direct_points_per_s``: the same readings as pre-encoded line protocol, written
   straight into influxd (same batch size and concurrency as the worker): the database limit;
2. ``broker_bare_readings_per_s``: the same messages delivered to a bare paho subscriber
   process (QoS 1, auto-ack): the broker + client limit;
3. ``readings_per_s``: the messages published (QoS 1, 100 readings each, as fast as the
   broker takes them) and ingested by a worker process (``python -m ingest run``), from the
   first publish to the last point written (a 204 makes a point queryable), then verified by
   counting the points in InfluxDB: ``lost`` and ``duplicates`` compare that count with what
   was sent;
4. ``single_reading_msgs_per_s``: the same with one reading per message.

Publishing runs in this process, consumers in their own processes, as in production. The
last line of output is one JSON object; with ``--repeat N`` its figures are medians.

Where the time goes (``docs/ingest.md``):

- every end-to-end phase also reports the CPU each process spent per reading during it
  (``cpu_us_per_reading``: worker, influxd, broker, publisher; from ``/proc/<pid>/stat``) and
  ``worker_busy``, the worker's CPU seconds per wall second (1.0: one core, all the time);
  ``influx_direct_cpu_us_per_point`` is influxd's own cost in the direct phase;
- ``--stages`` times the worker's pure steps in this process on the same payloads (CPU time,
  best of 5: msgspec decode, name checks, conform, line protocol, request body) and exits;
- ``--profile DIR`` runs the worker under cProfile and leaves ``DIR/worker-<phase>.prof``;
- ``--compare-repo DIR`` runs the 100-reading phase again with the worker of another checkout
  (order alternating per run) and reports ``before_*`` beside the figures: before/after
  against the same ceilings.

The publisher writes PUBLISH packets on a plain socket (``_ingest_publisher.Publisher``): it
stands for gateways on other machines and should take as little of the shared cores as it can.

The parts, one job each (this directory is on ``sys.path`` when the file runs as a script):
``_ingest_publisher.py`` (the raw publisher, purging a phase's session),
``_ingest_ceilings.py`` (the broker and database limits), ``_ingest_e2e.py`` (one phase
through a worker process, with the CPU split), ``_ingest_stages.py`` (``--stages``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _ingest_ceilings import ROOT, bench_broker_bare, bench_influx_direct
from _ingest_e2e import bench_end_to_end, cpu_seconds
from _ingest_stages import bench_stages

from smartcity._localstack import Influxd, Mosquitto
from telemetry import Batch, Reading, Topics, encode_batch


def make_payloads(
    readings: int, gateways: int, per_message: int, base_ts: int
) -> tuple[list[tuple[str, bytes]], list[tuple[str, list[Reading]]]]:
    """Distinct readings (unique series+time each) grouped into per-gateway batches."""
    topics = Topics(ROOT)
    messages: list[tuple[str, bytes]] = []
    batches: list[tuple[str, list[Reading]]] = []
    n_messages = readings // per_message
    seqs = [0] * gateways
    for m in range(n_messages):
        g = m % gateways
        gw = f"gw-{g:04d}"
        rs = []
        for i in range(per_message):
            k = m * per_message + i
            rs.append(
                Reading(
                    device=f"loop-{k % 20}",
                    measurement="TrafficFlowObserved",
                    ts=base_ts + k * 1000,
                    fields={
                        "intensity": float(k % 900),
                        "averageVehicleSpeed": 30.0 + (k % 50) / 2,
                        "occupancy": (k % 100) / 100,
                    },
                    tags={"lane": str(k % 3 + 1)},
                )
            )
        seqs[g] += 1
        payload = encode_batch(Batch(gateway=gw, seq=seqs[g], readings=rs))
        messages.append((topics.telemetry(gw), payload))
        batches.append((gw, rs))
    return messages, batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--gateways", type=int, default=50)
    parser.add_argument("--single-messages", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=3)
    parser.add_argument("--receive-maximum", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--stages",
        action="store_true",
        help="time the worker's pure steps in this process, then exit",
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        default=None,
        help="run the worker under cProfile, profiles into DIR",
    )
    parser.add_argument(
        "--compare-repo",
        metavar="DIR",
        default=None,
        help="also run the 100-reading phase with the worker of another checkout (before/"
        "after in the same run, against the same ceilings; order alternates per run)",
    )
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the services started below are stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    base_ts = (time.time_ns() // 10**9 - 3600) * 10**9
    messages, batches = make_payloads(args.readings, args.gateways, 100, base_ts)
    # Singles are stamped 20 minutes before the batches: distinct points, and in the past, since
    # ingest refuses readings stamped beyond its clock-skew allowance.
    if args.stages:
        print(
            json.dumps(
                {
                    "ns_per_reading_cpu": bench_stages(messages, args.readings),
                    "readings": args.readings,
                }
            ),
            flush=True,
        )
        return
    singles, _ = make_payloads(args.single_messages, args.gateways, 1, base_ts - 1200 * 10**9)
    results: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp_name:
        tmp = Path(tmp_name)
        with Mosquitto(data_dir=tmp / "mosquitto") as mq, Influxd(data_dir=tmp / "influxd") as ix:
            for run in range(args.repeat):
                influx_cpu0 = cpu_seconds(ix.pid)
                direct_s = bench_influx_direct(
                    ix, f"direct{run}", batches, args.batch_size, args.concurrency
                )
                direct_cpu = cpu_seconds(ix.pid) - influx_cpu0
                bare_s = bench_broker_bare(mq, messages)

                def other_worker(run: int = run) -> dict[str, float]:
                    if args.compare_repo is None:
                        return {}
                    repo = Path(args.compare_repo).resolve()
                    name = f"before{run}"
                    return bench_end_to_end(mq, ix, name, messages, args.readings, args, tmp, repo)

                # the other checkout's worker before this one in even runs, after it in odd
                before = other_worker() if run % 2 == 0 else {}
                e2e = bench_end_to_end(mq, ix, f"e2e{run}", messages, args.readings, args, tmp)
                if run % 2 == 1:
                    before = other_worker()
                single = bench_end_to_end(
                    mq, ix, f"single{run}", singles, args.single_messages, args, tmp
                )
                r = {
                    "readings_per_s": e2e["rate"],
                    "lost": e2e["lost"],
                    "duplicates": e2e["duplicates"],
                    "rewritten": e2e["rewritten"],
                    "influx_direct_points_per_s": args.readings / direct_s,
                    "broker_bare_readings_per_s": args.readings / bare_s,
                    "single_reading_msgs_per_s": single["rate"],
                    "single_lost": single["lost"],
                    "single_duplicates": single["duplicates"],
                    "influx_direct_cpu_us_per_point": direct_cpu * 1e6 / args.readings,
                    **{k: v for k, v in e2e.items() if k.startswith(("cpu_", "worker_"))},
                }
                limit = min(r["influx_direct_points_per_s"], r["broker_bare_readings_per_s"])
                r["ratio_to_limit"] = r["readings_per_s"] / limit
                if before:
                    r["before_readings_per_s"] = before["rate"]
                    r["before_ratio_to_limit"] = before["rate"] / limit
                    r["before_lost"] = before["lost"]
                    r["before_duplicates"] = before["duplicates"]
                    r["before_cpu_us_per_reading_worker"] = before["cpu_us_per_reading_worker"]
                results.append(r)
                print(
                    f"run {run + 1}/{args.repeat}: "
                    + json.dumps({k: round(v, 3) for k, v in r.items()}),
                    flush=True,
                )
    summary: dict[str, Any] = {
        key: round(statistics.median(r[key] for r in results), 3) for key in results[0]
    }
    summary["lost"] = max(int(r["lost"]) for r in results)
    summary["duplicates"] = max(int(r["duplicates"]) for r in results)
    summary.update(
        runs=len(results),
        readings=args.readings,
        gateways=args.gateways,
        single_messages=args.single_messages,
        batch_size=args.batch_size,
        concurrency=args.concurrency,
        receive_maximum=args.receive_maximum,
        cpus=os.cpu_count(),
    )
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
