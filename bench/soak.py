"""Soak benchmark: lossless under faults, with everything failing at once.

A fleet of simulated gateways (the ``load-1000`` scenario scaled to ``--gateways``, at a fixed
offered load) publishes into a real mosquitto (persistence on, a deliberate queue budget)
drained by two ingest worker processes (``ingest-0``, ``ingest-1``, one share group) into a
real influxd, while a seeded schedule breaks every server-side component, repeatedly and
overlapping (:mod:`simulators._chaos`):

* SIGKILL a random ingest worker, restart it with the same client id a few seconds later;
* stop influxd for 10-30 s, start it again;
* restart mosquitto (SIGTERM, start on the same port and data directory);
* SIGKILL mosquitto (just after it saved its persistence, or with what it saved last) and
  start it on the same data: gap repair (the API asks the gateways to resend) refills what
  the broker forgot;
* uplink loss and reboots of a tenth of the gateways;
* with ``--hostile N``, N hostile gateways publish beside the honest ones throughout;
* with ``--edge-agents N``, N real edge agent processes (simulated inputs, their own spools)
  publish beside the fleet and are SIGKILLed now and then; their spools are their ledger
  (``by_kind.edge_agents`` in the report; smartcity/_chaos_edge.py).

Then the fleet stops, the drain is awaited (bounded) and the ledger is compared with
InfluxDB: readings acknowledged by the broker against distinct points stored (``lost``,
``duplicates``), per-gateway seq coverage from ingest's ``ingest_batch`` bookkeeping, events
per kind, the time to catch up after the last fault and to drain after the fleet stopped.
Throughput (readings stored per second; acknowledged to the fleet per second) during chaos is
set against a reference phase of the same fleet without faults, in the same run.

Run by hand: ``.venv/bin/python bench/soak.py [--gateways 200] [--minutes 5] [--seed 1]
[--hostile N]``; ``--cluster [--replicas 2]`` runs it in the cluster profile (NATS nodes,
leaders, full restarts, InfluxDB replicas: docs/cluster.md, "Chaos and benchmark").
Progress lines first; the last line is one JSON object, the chaos report
(docs/operations.md) with, among others, ``honest_lost``, ``honest_duplicated``,
``hostile_cases`` (per case: sent, acked, refused...), ``service_crashes`` (ingest workers and
API processes that exited on their own; the schedule's kills are not counted) and
``repair_s`` (broker restart after a SIGKILL → last hole refilled). Exit status 1 when an
honest reading was lost or doubled.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from types import FrameType

from smartcity._chaos import ChaosConfig, run_chaos


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through run_chaos's finally: every process stopped


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateways", type=int, default=200)
    parser.add_argument("--minutes", type=float, default=5.0, help="chaos phase length")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--speed", type=float, default=20.0,
                        help="simulated seconds per wall second (sets the offered load)")
    parser.add_argument("--reference", type=float, default=30.0,
                        help="seconds of the no-fault reference phase")
    parser.add_argument("--hostile", type=int, default=0,
                        help="hostile gateways beside the honest ones")
    parser.add_argument("--cluster", action="store_true",
                        help="the cluster profile: 3 NATS nodes, InfluxDB replicas "
                        "(docs/cluster.md, smartcity/_chaos_cluster.py)")
    parser.add_argument("--replicas", type=int, default=2, help="InfluxDB replicas (--cluster)")
    parser.add_argument("--edge-agents", type=int, default=0,
                        help="real edge agent processes beside the fleet")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="keep services' data and logs here (default: a temporary dir)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _interrupt)
    duration = args.minutes * 60
    config = ChaosConfig(
        gateways=args.gateways,
        seed=args.seed,
        speed=args.speed,
        reference_s=args.reference,
        duration_s=duration,
        quiet_s=max(30.0, 0.15 * duration),
        data_dir=args.data_dir,
        hostile=args.hostile,
        cluster=args.cluster,
        replicas=args.replicas,
        edge_agents=args.edge_agents,
    )
    report = run_chaos(config)
    result = report.to_dict()
    print(
        f"sent {report.sent} readings, stored {report.stored}: lost {report.lost}, "
        f"duplicated {report.duplicates}; seqs missing {report.missing_seqs}, "
        f"doubled {report.duplicate_seqs}; events {report.events}; "
        f"service crashes {report.service_crashes}; repair_s {report.repair_s}"
    )
    if report.edge_agents:
        e = report.edge_agents
        print(
            f"edge agents: {e['agents']}, spooled {e['spooled_readings']} readings, stored "
            f"{e['stored']}: lost {e['lost']}, duplicated {e['duplicated']}; seqs missing "
            f"{e['missing_seqs']}; agent kills {e['agent_kills']}"
        )
    print(json.dumps(result))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
