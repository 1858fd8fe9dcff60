"""Cluster benchmark: end-to-end readings/s through the cluster profile against the
single-node path in the same run, and the catch-up time after each kind of cluster fault.

Run by hand (not part of the tests; the lead runs it on a quiet machine)::

    .venv/bin/python bench/cluster.py [--gateways 50] [--ticks 600] [--repeat 3]
        [--fault-gateways 50] [--fault-speed 20] [--fault-seconds 40] [--no-faults]

1. **Throughput**, alternating the two profiles in each repeat, the same fleet each time
   (``load-1000`` scaled to ``--gateways``, ``--ticks`` simulated steps, as fast as possible:
   speed 0, the fleet bounded by its backlog):

   - ``single``: fleet (MQTT 5) ─▶ mosquitto ─▶ ``--workers`` ingest workers (shared
     subscription) ─▶ one influxd;
   - ``cluster``: fleet (MQTT 3.1.1, one NATS user per gateway, spread over the nodes) ─▶
     3 NATS nodes (JetStream + MQTT, ``$MQTT_msgs`` R3, PUBACK after a quorum stored it) ─▶
     ``--workers`` ingest workers (source ``jetstream``, one durable consumer) ─▶ one influxd
     (``--replicas`` InfluxDB replicas, each with its own workers and consumer; the rate is
     until **every** replica held everything).

   ``readings_per_s`` = readings created / (first PUBACK → InfluxDB held them all): the
   services, the fleet and this process share the machine. ``fleet_generate_readings_per_s``
   is what the fleet makes with no broker at all: a profile near it is fleet-bound. Each run
   also checks the count (``lost``: readings acknowledged and not stored).

2. **Catch-up after each kind of fault** (cluster profile, 2 replicas, a fixed offered load:
   ``--fault-speed`` simulated s per wall s): one short chaos run per kind with that single
   event (``smartcity._chaos``, the ledger checked in every replica):
   ``node_kill`` (a node leading nothing), ``leader_kill`` (the ``$MQTT_msgs`` stream
   leader), ``full_restart`` (every node down, then up), ``replica_kill`` (SIGKILL one
   InfluxDB replica). ``catch_up_s``: fault over (the node, the cluster or the replica
   answers again) → every replica held everything acknowledged at that moment;
   ``down_to_ready_s``: the fault began → the servers answered again (the planned down
   time, 3 s for NATS and 10 s for a replica, plus the restart until ready).

Progress lines first; the last line is one JSON object: medians over the repeats
(``single_readings_per_s``, ``cluster_readings_per_s``, ``ratio`` = cluster / single,
``catch_up_s`` per kind), every run's figures, and whether every check held (``ok``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from simulators import FleetConfig, GatewayFleet
from smartcity._chaos import ChaosConfig, run_chaos, scaled_scenario
from smartcity._chaos_cluster import ClusterRun
from smartcity._chaos_plan import ChaosKind, NodeKillTarget
from smartcity._chaos_report import Monitor
from smartcity._chaos_run import _Run

_WEEK_NS = 7 * 86_400 * 10**9
#: (name in the output, chaos kind, node_kill target)
FAULTS: tuple[tuple[str, ChaosKind, NodeKillTarget], ...] = (
    ("node_kill", "node_kill", "follower"),
    ("leader_kill", "node_kill", "stream leader"),
    ("full_restart", "cluster_restart", "follower"),
    ("replica_kill", "replica_kill", "follower"),
)


#: The timeline lines of a fault's begin and end (smartcity._chaos_cluster).
_FAULT_LINES = frozenset(
    {
        "nats SIGKILL",
        "nats node started",
        "nats cluster down",
        "nats cluster started",
        "influxd SIGKILL",
        "influxd started",
    }
)


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through the runs' close(): every process stopped


def _say(line: str) -> None:
    print(line, flush=True)


def throughput(profile: str, args: argparse.Namespace, data: Path) -> dict[str, Any]:
    """One run of one profile: services up, the fleet publishes ``args.ticks`` steps as fast
    as it can, then the time until InfluxDB (every replica) held every reading."""
    config = ChaosConfig(
        cluster=profile == "cluster", gateways=args.gateways, workers=args.workers,
        replicas=args.replicas, api=False, speed=1.0, reference_s=0.0, duration_s=60.0,
        quiet_s=10.0, kinds=("worker_kill",), database="bench", data_dir=data,
    )  # fmt: skip
    run: _Run = ClusterRun(config, data, _say) if config.cluster else _Run(config, data, _say)
    try:
        run.start_services()
        scenario = scaled_scenario(config)
        # As fast as possible, so the simulated clock runs far ahead of the wall clock:
        # start it weeks back (ingest refuses readings from the future).
        start_ns = scenario.start_ns(time.time_ns()) - 4 * _WEEK_NS
        fleet_config = dataclasses.replace(
            run.fleet_config(scenario, start_ns), speed=0.0, keep_delivered_s=0.0,
            commands=False, drain_timeout_s=300.0,
        )  # fmt: skip
        fleet = GatewayFleet(fleet_config)
        errors: list[BaseException] = []

        def publish() -> None:
            try:
                fleet.run(ticks=args.ticks)
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)

        monitor = Monitor(run.stores, config.database, fleet)
        thread = threading.Thread(target=publish, name="bench.fleet", daemon=True)
        thread.start()
        while fleet.ledger.readings == 0 and thread.is_alive():
            time.sleep(0.01)
        first_ack = time.monotonic()
        thread.join()
        if errors:
            raise RuntimeError(f"{profile}: the fleet failed: {errors[0]}") from errors[0]
        created = fleet.ledger.totals()["readings"]
        deadline = time.monotonic() + 300
        stored = monitor.stored()
        while (stored is None or stored < created) and time.monotonic() < deadline:
            time.sleep(0.05)
            stored = monitor.stored()
        done = time.monotonic()
        acked = fleet.ledger.readings
        result = {
            "profile": profile,
            "readings": created,
            "acked": acked,
            "stored": stored,
            "lost": max(0, acked - (stored or 0)),
            "seconds": round(done - first_ack, 2),
            "readings_per_s": round(created / (done - first_ack), 1),
        }
        _say(f"[bench] {profile:8s} {json.dumps(result)}")
        return result
    finally:
        run.close()


def generation_ceiling(args: argparse.Namespace) -> float:
    """Readings/s the fleet makes and spools in this process with no broker at all (step,
    encode, number): when both profiles come near it, the fleet is the bottleneck, not the
    servers, and the ratio says little."""
    config = ChaosConfig(gateways=args.gateways, speed=1.0, reference_s=0.0, duration_s=60.0,
                         quiet_s=10.0, kinds=("worker_kill",))  # fmt: skip
    fleet = GatewayFleet(FleetConfig(scenario=scaled_scenario(config), speed=0.0,
                                     keep_delivered_s=0.0, commands=False))  # fmt: skip
    start = time.perf_counter()
    readings = sum(fleet.spool_batches(fleet.step()) for _ in range(args.ticks))
    return round(readings / (time.perf_counter() - start), 1)


def catch_up(
    name: str,
    kind: ChaosKind,
    target: NodeKillTarget,
    seed: int,
    args: argparse.Namespace,
    data: Path,
) -> dict[str, Any]:
    """One chaos run in the cluster profile with this single fault."""
    down = {"node_kill": (3.0, 3.0), "cluster_restart": (3.0, 3.0), "replica_kill": (10.0, 10.0)}
    config = ChaosConfig(
        cluster=True, gateways=args.fault_gateways, workers=args.workers, replicas=2,
        speed=args.fault_speed, seed=seed, reference_s=5.0, duration_s=args.fault_seconds,
        quiet_s=args.fault_seconds - 15.0, kinds=(kind,), extra_events=False,
        node_kill_targets=(target,),
        node_down_s=down["node_kill"], cluster_down_s=down["cluster_restart"],
        replica_down_s=down["replica_kill"], drain_timeout_s=120.0, data_dir=data,
    )  # fmt: skip
    report = run_chaos(config, say=lambda line: None, progress_every_s=3600.0)
    what = [e for e in report.timeline if e["what"] in _FAULT_LINES]
    # The fault began (first line) -> the servers answered again (second line): the planned
    # down time plus the restart until the cluster (or influxd) is ready.
    back_s = round(what[1]["t"] - what[0]["t"], 2) if len(what) >= 2 else None
    result = {
        "fault": name,
        "seed": seed,
        "catch_up_s": None
        if report.catch_up_after_last_fault_s is None
        else round(report.catch_up_after_last_fault_s, 2),
        "per_replica_catch_up_s": [r.get("catch_up_after_last_fault_s") for r in report.replicas],
        "down_to_ready_s": back_s,
        "what": what,
        "sent": report.sent,
        "lost": report.lost,
        "duplicates": report.duplicates,
        "ok": report.ok,
    }
    _say(f"[bench] {name:12s} catch-up {result['catch_up_s']} s, ok {report.ok}")
    return result


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 2) if known else None


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--gateways", type=int, default=50)
    parser.add_argument(
        "--ticks",
        type=int,
        default=600,
        help="simulated steps the fleet publishes per throughput run",
    )
    parser.add_argument("--workers", type=int, default=2, help="ingest workers per InfluxDB")
    parser.add_argument(
        "--replicas", type=int, default=1, help="InfluxDB replicas in the cluster throughput runs"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--fault-gateways", type=int, default=50)
    parser.add_argument(
        "--fault-speed",
        type=float,
        default=20.0,
        help="offered load of the fault runs (simulated s per wall s)",
    )
    parser.add_argument(
        "--fault-seconds",
        type=float,
        default=40.0,
        help="chaos phase of each fault run (the fault starts early in it)",
    )
    parser.add_argument("--no-faults", action="store_true", help="throughput only")
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()
    if args.fault_seconds < 30:
        parser.error("--fault-seconds must be at least 30")
    signal.signal(signal.SIGTERM, _interrupt)
    # The sessions' reconnect warnings are the faults doing their job: keep them out.
    logging.basicConfig(level=logging.ERROR)
    root = args.data_dir or Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    runs: list[dict[str, Any]] = []
    faults: list[dict[str, Any]] = []
    ceiling = generation_ceiling(args)
    _say(f"[bench] the fleet alone makes {ceiling} readings/s (no broker)")
    for i in range(args.repeat):
        for profile in ("single", "cluster") if i % 2 == 0 else ("cluster", "single"):
            runs.append(throughput(profile, args, root / f"tp-{i}-{profile}"))
        if not args.no_faults:
            for name, kind, target in FAULTS:
                faults.append(catch_up(name, kind, target, 100 + i, args, root / f"f-{i}-{name}"))
    single = _median([r["readings_per_s"] for r in runs if r["profile"] == "single"])
    cluster = _median([r["readings_per_s"] for r in runs if r["profile"] == "cluster"])
    summary: dict[str, Any] = {
        "single_readings_per_s": single,
        "cluster_readings_per_s": cluster,
        "ratio": round(cluster / single, 3) if single and cluster else None,
        "fleet_generate_readings_per_s": ceiling,
        "catch_up_s": {
            name: _median([f["catch_up_s"] for f in faults if f["fault"] == name])
            for name, _k, _t in FAULTS
        } if faults else {},
        "down_to_ready_s": {
            name: _median([f["down_to_ready_s"] for f in faults if f["fault"] == name])
            for name, _k, _t in FAULTS
        } if faults else {},
        "lost": sum(r["lost"] for r in runs) + sum(f["lost"] for f in faults),
        "duplicates": sum(f["duplicates"] for f in faults),
        "ok": all(r["lost"] == 0 for r in runs) and all(f["ok"] for f in faults),
        "repeats": args.repeat,
        "gateways": args.gateways,
        "ticks": args.ticks,
        "workers": args.workers,
        "replicas": args.replicas,
        "fault_gateways": args.fault_gateways,
        "fault_speed": args.fault_speed,
        "cpus": os.cpu_count(),
        "runs": runs,
        "faults": faults,
    }  # fmt: skip
    print(json.dumps(summary), flush=True)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
