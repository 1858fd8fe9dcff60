"""API benchmark: latest-reading GETs, history queries and publish-to-WebSocket latency.

Run by hand (not part of the tests)::

    .venv/bin/python bench/api.py [--seconds 10] [--rate 500]

It starts its own mosquitto and influxd (smartcity._localstack) on free loopback ports, loads
1,000 devices (200 simulated gateways x 5, the ids simulators.GatewayFleet uses) with 24 h of
1-minute history straight into influxd, starts the API as its own process
(``python -m smartcity api run``; it warms its live state from that history), then measures:

1. ``latest_p50_ms`` / ``latest_p99_ms``: ``GET /v1/live/{gw}/{device}`` of a random device,
   open loop at ``--rate`` req/s over keep-alive connections; latency counts from the
   scheduled send time, so a stalled server cannot hide queueing (no coordinated omission);
2. ``latest_max_rps``: the same request closed loop over 32 connections for ``--seconds``;
3. ``history_p50_ms`` / ``history_p99_ms``: one device, 24 h as 5-minute means (288 points),
   sequentially, 200 times;
4. ``live_p50_ms`` / ``live_p99_ms``: while a 1,000-gateway fleet process publishes 5,000
   readings/s, a probe publishes one reading every 20 ms carrying its send time; a WebSocket
   client filtered to the probe device measures send-to-receive time. Where the time went
   (``live_breakdown``, from the API's own histograms, scraped before and after the run):
   ``smartcity_api_mqtt_handle_seconds`` (one broker message handled: every message behind
   it waits that long; the fleet publishes its 1,000 messages per second in one burst),
   ``smartcity_api_stream_delay_seconds`` (hub to the client's socket) and the event-loop lag;
5. ``sta_observations_p50_ms`` / ``_p99_ms``: a SensorThings Observations page (100 points of
   one Datastream, ``/sta/v1.1/Datastreams('...')/Observations``), sequentially, 200 times;
   ``sta_thing_p50_ms`` / ``_p99_ms``: one Thing with its Datastreams and Locations expanded.

Ceilings, measured in the same run (issue: a figure without its ceiling does not say whether
it is our code or the machine):

- ``bare_max_rps``: the same closed loop against the same server stack (uvicorn with the same
  loop and HTTP parser, a Starlette route answering a constant JSON body the size of a latest
  answer, key header read) in its own process: ``latest_ratio_to_bare`` = latest_max_rps /
  bare_max_rps (target >= 0.5);
- ``live_bare_p99_ms``: a bare MQTT subscriber (paho, its own process) on the probe topic
  during the live run, send-to-receive time of the same probes: ``live_p99_ratio_to_bare`` =
  live_p99 / live_bare_p99 (target <= 3). With ``--bare-all`` a second bare subscriber takes
  every telemetry message of the run (the fleet's bursts too, as the API must) and times the
  probes among them: ``live_bare_all_p99_ms``, ``live_p99_ratio_to_bare_all`` (off by
  default: its CPU is taken from the API's, so the run is not comparable with one without);
- ``sta_observations_ratio_to_influx``: the API's p99 for the Observations page over the
  p99 of the same InfluxQL query sent straight to influxd (same client, same run);
  ``sta_thing_ratio_to_bare``: the expanded Thing's p99 over the bare stack's p99 answering
  a constant body of the same size.

The load generator is a raw HTTP/1.1 client on asyncio (an HTTP library would measure itself).
The last line of output is one JSON object. ``--live-only`` measures 4. alone (its keys only).
The live part is in ``_api_live.py``; ``_api_live_handle.py`` measures the CPU cost per broker
message of the API's handling in process, without the machine's noise (docs/api.md "Live push
latency").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from _api_live import measure_live, pct
from _api_parts import (
    BARE,
    DATABASE,
    GATEWAYS,
    ROOT,
    influx_observations,
    sta_observations,
    sta_thing,
)

PER = 5
KINDS = ("loop", "bus", "parking", "air", "energy")
MIN_NS = 60 * 10**9


def load_history(influxd: Any, now_ns: int) -> int:
    """24 h of 1-minute readings for every device, written as line protocol."""
    rng = np.random.default_rng(1)
    start = now_ns - 24 * 60 * MIN_NS
    times = start + np.arange(24 * 60, dtype=np.int64) * MIN_NS
    written = 0
    for g in range(GATEWAYS):
        lines: list[str] = []
        gw = f"sim-gw-{g:04d}"
        for d in range(PER):
            kind = KINDS[(g * PER + d) % len(KINDS)]
            dev = f"{kind}-{g:04d}-{d}"
            a = rng.normal(0, 1, len(times))
            tags = f"device={dev},gateway={gw}"
            if kind == "loop":
                m, fmt = "TrafficFlowObserved", [
                    f"intensity={600 + 80 * x:.2f},averageVehicleSpeed={50 + 5 * x:.2f},"
                    f"occupancy={0.2 + 0.02 * x:.3f}" for x in a]
            elif kind == "bus":
                m, fmt = "Vehicle", [
                    f"latitude={59.91 + 0.01 * x:.6f},longitude={10.75 + 0.01 * x:.6f},"
                    f"speed={30 + 3 * x:.2f},heading={(180 + 90 * x) % 360:.1f}" for x in a]
            elif kind == "parking":
                m, fmt = "OffStreetParking", [
                    f"availableSpotNumber={int(200 + 50 * x)}i,totalSpotNumber=400i" for x in a]
            elif kind == "air":
                m, fmt = "AirQualityObserved", [
                    f"pm25={12 + 3 * x:.2f},no2={30 + 5 * x:.2f}" for x in a]
            else:
                m, fmt = "ThreePhaseAcMeasurement", [f"activePower={1000 + 50 * x:.1f}" for x in a]
            lines.extend(
                f'{m},{tags} {f},quality="good" {t}' for f, t in zip(fmt, times.tolist(),
                                                                      strict=True)
            )
        influxd.write(DATABASE, "\n".join(lines).encode())
        written += len(lines)
    return written


class RawHttp:
    """A keep-alive HTTP/1.1 connection doing one GET at a time."""

    def __init__(self, host: str, port: int, key: str) -> None:
        self.host, self.port, self.key = host, port, key

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def get(self, path: str) -> int:
        self.writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\nX-API-Key: {self.key}\r\n\r\n".encode()
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        chunked = False
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
            elif line.lower() == b"transfer-encoding: chunked":  # influxd's /query
                chunked = True
        if not chunked:
            await self.reader.readexactly(length)
            return status
        while size := int((await self.reader.readuntil(b"\r\n")).strip(), 16):
            await self.reader.readexactly(size + 2)
        await self.reader.readuntil(b"\r\n")
        return status

    def close(self) -> None:
        self.writer.close()


def _paths() -> list[str]:
    return [
        f"/v1/live/sim-gw-{g:04d}/{KINDS[(g * PER + d) % 5]}-{g:04d}-{d}"
        for g in range(GATEWAYS) for d in range(PER)
    ]


async def open_loop(host: str, port: int, key: str, rate: float, seconds: float,
                    connections: int = 64) -> tuple[list[float], int]:
    paths = _paths()
    conns = [RawHttp(host, port, key) for _ in range(connections)]
    await asyncio.gather(*(c.open() for c in conns))
    total = int(rate * seconds)
    latencies: list[float] = []
    errors = 0
    counter = iter(range(total))
    t0 = time.perf_counter() + 0.1

    async def worker(conn: RawHttp) -> None:
        nonlocal errors
        for i in counter:
            scheduled = t0 + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            status = await conn.get(random.choice(paths))
            latencies.append((time.perf_counter() - scheduled) * 1000)
            errors += status != 200

    await asyncio.gather(*(worker(c) for c in conns))
    for c in conns:
        c.close()
    return latencies, errors


async def closed_loop(host: str, port: int, key: str, seconds: float,
                      connections: int = 32) -> tuple[float, int]:
    paths = _paths()
    conns = [RawHttp(host, port, key) for _ in range(connections)]
    await asyncio.gather(*(c.open() for c in conns))
    done = errors = 0
    stop = time.perf_counter() + seconds

    async def worker(conn: RawHttp) -> None:
        nonlocal done, errors
        while time.perf_counter() < stop:
            errors += await conn.get(random.choice(paths)) != 200
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.perf_counter() - start
    for c in conns:
        c.close()
    return done / elapsed, errors


async def history(host: str, port: int, key: str, now_ns: int, n: int = 200) -> list[float]:
    conn = RawHttp(host, port, key)
    await conn.open()
    end = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now_ns // 10**9 + 60))
    start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now_ns // 10**9 - 86400))
    out = []
    for i in range(n):
        g = i % GATEWAYS
        path = (f"/v1/history?gateway=sim-gw-{g:04d}&device=air-{g:04d}-3"
                f"&measurement=AirQualityObserved&field=pm25&start={start}&end={end}"
                "&window=5m&aggregate=mean")
        t = time.perf_counter()
        status = await conn.get(path)
        out.append((time.perf_counter() - t) * 1000)
        if status != 200:
            raise SystemExit(f"history answered {status}")
    conn.close()
    return out


async def sequential(host: str, port: int, key: str, path_of: Any, n: int = 200,
                     what: str = "request") -> list[float]:
    """``n`` GETs one after the other on one keep-alive connection; milliseconds each."""
    conn = RawHttp(host, port, key)
    await conn.open()
    out = []
    for i in range(n):
        t = time.perf_counter()
        status = await conn.get(path_of(i))
        out.append((time.perf_counter() - t) * 1000)
        if status != 200:
            raise SystemExit(f"{what} answered {status}: {path_of(i)}")
    conn.close()
    return out


def bare_stack(key: str, body: bytes, thing: bytes, seconds: float) -> tuple[float, list[float]]:
    """Closed-loop req/s of the bare server stack answering ``body``, and its sequential
    latencies answering ``thing``."""
    from smartcity._localstack import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", BARE, str(port), body.decode(),
                             thing.decode()],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/v1/live/a/b", headers={"X-API-Key": key})
                with urllib.request.urlopen(request, timeout=1):  # noqa: S310
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the bare stack did not start") from None
                time.sleep(0.1)
        rps, errors = asyncio.run(closed_loop("127.0.0.1", port, key, seconds))
        if errors:
            raise SystemExit(f"the bare stack answered {errors} errors")
        return rps, asyncio.run(sequential("127.0.0.1", port, key, lambda _i: "/thing"))
    finally:
        proc.terminate()
        proc.wait(30)


def measure_http(url: str, port: int, key: str, influxd: Any, now: int,
                 args: argparse.Namespace) -> dict[str, Any]:
    """Latest, history and SensorThings figures with their ceilings; print their lines and
    return the last line's keys."""
    lat, errors = asyncio.run(open_loop("127.0.0.1", port, key, args.rate, args.seconds))
    print(f"latest at {args.rate:g} req/s: p50 {pct(lat, 50):.2f} ms, "
          f"p99 {pct(lat, 99):.2f} ms, errors {errors}", flush=True)
    max_rps, max_errors = asyncio.run(closed_loop("127.0.0.1", port, key, args.seconds))
    print(f"latest closed loop: {max_rps:.0f} req/s, errors {max_errors}", flush=True)
    bodies = []
    for path in (_paths()[0], sta_thing(0)):
        sample = urllib.request.Request(f"{url}{path}", headers={"X-API-Key": key})  # noqa: S310
        with urllib.request.urlopen(sample) as r:  # noqa: S310
            bodies.append(r.read())
    bare_rps, bare_thing = bare_stack(key, bodies[0], bodies[1], args.seconds)
    print(f"bare stack closed loop: {bare_rps:.0f} req/s (ratio {max_rps / bare_rps:.2f})",
          flush=True)
    hist = asyncio.run(history("127.0.0.1", port, key, now))
    print(f"history 24h/5m: p50 {pct(hist, 50):.2f} ms, p99 {pct(hist, 99):.2f} ms", flush=True)
    sta_obs = asyncio.run(sequential("127.0.0.1", port, key, sta_observations,
                                     what="STA Observations"))
    influx_obs = asyncio.run(sequential(influxd.host, influxd.port, key, influx_observations,
                                        what="influxd"))
    sta_th = asyncio.run(sequential("127.0.0.1", port, key, sta_thing, what="STA Thing"))
    print(f"STA Observations page (100): p50 {pct(sta_obs, 50):.2f} ms, p99 "
          f"{pct(sta_obs, 99):.2f} ms; the same InfluxQL straight to influxd p50 "
          f"{pct(influx_obs, 50):.2f} ms, p99 {pct(influx_obs, 99):.2f} ms", flush=True)
    print(f"STA Thing, Datastreams and Locations expanded ({len(bodies[1])} bytes): "
          f"p50 {pct(sta_th, 50):.2f} ms, p99 {pct(sta_th, 99):.2f} ms; bare "
          f"stack, same size: p50 {pct(bare_thing, 50):.2f} ms, p99 "
          f"{pct(bare_thing, 99):.2f} ms", flush=True)
    return {
        "latest_p50_ms": round(pct(lat, 50), 3),
        "latest_p99_ms": round(pct(lat, 99), 3),
        "latest_rate": args.rate,
        "latest_errors": errors + max_errors,
        "latest_max_rps": round(max_rps, 1),
        "history_p50_ms": round(pct(hist, 50), 3),
        "history_p99_ms": round(pct(hist, 99), 3),
        "bare_max_rps": round(bare_rps, 1),
        "latest_ratio_to_bare": round(max_rps / bare_rps, 3),
        "sta_observations_p50_ms": round(pct(sta_obs, 50), 3),
        "sta_observations_p99_ms": round(pct(sta_obs, 99), 3),
        "sta_observations_influx_p50_ms": round(pct(influx_obs, 50), 3),
        "sta_observations_influx_p99_ms": round(pct(influx_obs, 99), 3),
        "sta_observations_ratio_to_influx": round(pct(sta_obs, 99) / pct(influx_obs, 99), 3),
        "sta_thing_p50_ms": round(pct(sta_th, 50), 3),
        "sta_thing_p99_ms": round(pct(sta_th, 99), 3),
        "sta_thing_bare_p50_ms": round(pct(bare_thing, 50), 3),
        "sta_thing_bare_p99_ms": round(pct(bare_thing, 99), 3),
        "sta_thing_ratio_to_bare": round(pct(sta_th, 99) / pct(bare_thing, 99), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--bare-all", action="store_true",
                        help="also a bare subscriber to all telemetry (see the docstring)")
    parser.add_argument("--live-only", action="store_true",
                        help="measure only the live push (4.) and its bare subscriber(s)")
    args = parser.parse_args()
    # Run as a script, this file's directory comes first on sys.path and its name ("api")
    # would shadow the api package.
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]

    from api import Database
    from smartcity._localstack import Influxd, Mosquitto, free_port

    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        var = Path(tmp)
        with Mosquitto(data_dir=var / "mosquitto") as broker, \
                Influxd(data_dir=var / "influxd") as influxd:
            influxd.create_database(DATABASE)
            now = time.time_ns() // MIN_NS * MIN_NS
            t = time.perf_counter()
            points = load_history(influxd, now)
            print(f"loaded {points} points in {time.perf_counter() - t:.1f}s", flush=True)
            db_url = f"sqlite:///{var / 'api.sqlite3'}"
            db = Database(db_url)
            db.create_schema()
            _, key = db.create_key(name="bench", role="viewer")
            port = free_port()
            env = {
                **os.environ,
                "SMARTCITY_API_PORT": str(port),
                "SMARTCITY_API_MQTT__PORT": str(broker.port),
                "SMARTCITY_API_TOPIC_ROOT": ROOT,
                "SMARTCITY_API_INFLUX_URL": influxd.url,
                "SMARTCITY_API_INFLUX_DATABASE": DATABASE,
                "SMARTCITY_API_DATABASE_URL": db_url,
                "SMARTCITY_API_RATE_LIMIT_PER_S": "1000000",
                "SMARTCITY_API_RATE_LIMIT_BURST": "1000000",
                "SMARTCITY_API_LOG_LEVEL": "WARNING",
            }
            log = (var / "api.log").open("wb")
            api = subprocess.Popen([sys.executable, "-m", "smartcity", "api", "run"], env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
            url = f"http://127.0.0.1:{port}"
            try:
                t = time.perf_counter()
                while True:
                    try:
                        with urllib.request.urlopen(f"{url}/readyz", timeout=1) as r:  # noqa: S310
                            ready = json.loads(r.read())
                            break
                    except OSError:
                        if api.poll() is not None or time.perf_counter() - t > 120:
                            raise SystemExit((var / "api.log").read_text()) from None
                        time.sleep(0.2)
                print(f"api ready in {time.perf_counter() - t:.1f}s: {ready}", flush=True)
                http = {} if args.live_only else measure_http(url, port, key, influxd, now, args)
                live = measure_live(url, key, broker, args.seconds, bare_all=args.bare_all)
            finally:
                api.terminate()
                api.wait(30)
                log.close()
    print(json.dumps({
        **http,
        **live,
        "history_points_loaded": points,
        "warmed_series": ready.get("warmed_series"),
        "cpus": os.cpu_count(),
    }), flush=True)


if __name__ == "__main__":
    main()
