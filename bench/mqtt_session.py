"""Benchmark: the MQTT session layer (foundation.mqtt) against raw paho and aiomqtt.

Two shapes of the platform, against a private mosquitto started here
(``smartcity._localstack.Mosquitto``):

(a) **ingest**: one subscriber drains a persistent-session backlog of ``--messages`` QoS 1
    messages of ``--payload`` bytes (Receive Maximum ``--receive-maximum``), acknowledging
    each one; messages per second from CONNACK to the last message. The backlog is filled
    before the subscriber connects, so the figure is the consumer's, not the publisher's.
(b) **fleet**: ``--sessions`` connections in one event loop, each keeping ``--window``
    QoS 1 publishes of ``--fleet-payload`` bytes in flight and waiting for every PUBACK;
    acknowledged messages per second over ``--seconds``.

Each shape runs, interleaved in every repeat:

- ``paho``: raw paho driven in the event loop (add_reader / add_writer / a misc timer), the
  same-run reference every ratio is taken against;
- ``aiomqtt``: aiomqtt 2.x. It has no manual ack, so (a) uses its auto-ack (an upper bound);
- ``session``: foundation.mqtt (manual ack in (a); ``await publish()`` in (b));
- ``session_nowait`` (b only): ``publish_nowait()`` with done callbacks, as the fleet uses it.

Each figure comes with the benchmark process's CPU time per message over the same window
(``cpu_us_per_msg``: the client's cost, which the shared machine's load disturbs less than
the rate; the broker runs in its own process). ``--profile DIR`` runs every variant under
cProfile and leaves ``DIR/<shape>-<variant>-<repeat>.prof`` (its rates are not figures).
``--loop uvloop`` runs every variant on uvloop (as the API runs; docs/ingest.md for the worker).

Run by hand (never in the test suite): ``.venv/bin/python bench/mqtt_session.py``; quick:
``--messages 20000 --sessions 100 --seconds 3 --repeats 3``. Figures are medians over the
repeats; ratios are medians of the per-repeat ratios to ``paho``. The last line is one
JSON object.

The parts (this directory is on ``sys.path`` when the file runs as a script):
``_mqtt_session_parts.py`` (window, reference driver, profiling), ``_mqtt_session_ingest.py``
(shape a), ``_mqtt_session_fleet.py`` (shape b).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from _mqtt_session_fleet import bench_fleet
from _mqtt_session_ingest import bench_ingest
from _mqtt_session_parts import Measured

from smartcity._localstack import Mosquitto


# -- report ------------------------------------------------------------------------------------
def summarise(runs: list[dict[str, Measured]]) -> dict[str, Any]:
    names = list(runs[0])
    out: dict[str, Any] = {}
    for n in names:
        out[f"{n}_msgs_per_s"] = round(statistics.median(r[n].rate for r in runs))
        out[f"{n}_cpu_us_per_msg"] = round(statistics.median(r[n].cpu_us for r in runs), 1)
        if n != "paho":
            vs = statistics.median(r[n].rate / r["paho"].rate for r in runs)
            cpu_vs = statistics.median(r[n].cpu_us / r["paho"].cpu_us for r in runs)
            out[f"{n}_vs_paho"] = round(vs, 3)
            out[f"{n}_cpu_vs_paho"] = round(cpu_vs, 3)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--payload", type=int, default=6_000)
    p.add_argument("--receive-maximum", type=int, default=1000)
    p.add_argument("--sessions", type=int, default=200)
    p.add_argument("--window", type=int, default=8)
    p.add_argument("--fleet-payload", type=int, default=1_000)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", choices=("ingest", "fleet"), default=None)
    p.add_argument("--profile", metavar="DIR", default=None, help="cProfile every variant")
    p.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the event loop every variant runs on (uvloop: as the API runs)",
    )
    args = p.parse_args()
    run_loop: Callable[[Coroutine[Any, Any, dict[str, Measured]]], dict[str, Measured]] = (
        asyncio.run
    )
    if args.loop == "uvloop":
        import uvloop

        run_loop = uvloop.run
    if args.profile is not None:
        Path(args.profile).mkdir(parents=True, exist_ok=True)

    ingest_runs: list[dict[str, Measured]] = []
    fleet_runs: list[dict[str, Measured]] = []
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(data_dir=Path(tmp), max_queued_messages=10 * args.messages + 10)
        broker.start()
        try:
            for run in range(args.repeats):
                if args.only in (None, "ingest"):
                    ingest_runs.append(run_loop(bench_ingest(broker.port, args, run)))
                    print(f"ingest run {run}: {_fmt(ingest_runs[-1])}", file=sys.stderr)
                if args.only in (None, "fleet"):
                    fleet_runs.append(run_loop(bench_fleet(broker.port, args, run)))
                    print(f"fleet run {run}: {_fmt(fleet_runs[-1])}", file=sys.stderr)
        finally:
            broker.stop()
    result: dict[str, Any] = {
        "ingest": {
            "messages": args.messages,
            "payload_bytes": args.payload,
            "receive_maximum": args.receive_maximum,
            **(summarise(ingest_runs) if ingest_runs else {}),
        },
        "fleet": {
            "sessions": args.sessions,
            "window": args.window,
            "payload_bytes": args.fleet_payload,
            "seconds": args.seconds,
            **(summarise(fleet_runs) if fleet_runs else {}),
        },
        "repeats": args.repeats,
        "statistic": "median",
        "reference": "paho driven in the event loop, same run",
    }
    if args.loop != "asyncio":  # the default run's keys stay as they were
        result["loop"] = args.loop
    print(json.dumps(result))
    return 0


def _fmt(rates: dict[str, Measured]) -> str:
    return ", ".join(f"{k} {v.rate:,.0f}/s ({v.cpu_us:.1f} us cpu)" for k, v in rates.items())


if __name__ == "__main__":
    sys.exit(main())
