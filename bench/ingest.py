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

The publisher writes PUBLISH packets on a plain socket (see :class:`Publisher`): it stands
for gateways on other machines and should take as little of the shared cores as it can.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from smartcity._localstack import Influxd, Mosquitto, free_port
from telemetry import Batch, LineProtocolEncoder, Reading, Topics, encode_batch

ROOT = "bench"
PYTHON = sys.executable
REPO = Path(__file__).resolve().parent.parent


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


def _varint(n: int) -> bytes:
    """MQTT's variable byte integer (remaining length, property length)."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


class Publisher:
    """QoS 1 publisher (MQTT 5) that keeps up to ``window`` messages in flight.

    It stands for the gateways, which run on other machines in production, yet here it shares
    the two cores with the system under test (the direct-write phase has no such guest). So
    it writes PUBLISH packets on a plain socket, up to 64 per ``sendall``, and a reader
    thread counts the PUBACKs: ~3 us of CPU per message, where paho took ~70 us (0.7 us per
    reading of 100-reading messages, a twentieth of the whole system's CPU per reading).
    (paho with ``max_inflight_messages`` set was quadratic besides: it rescans its outgoing
    dict on every PUBACK.)
    """

    def __init__(self, port: int, *, window: int = 500) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port))
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client_id = f"bench-pub-{os.getpid()}".encode()
        # CONNECT v5: clean start, keep alive 600 s, no properties, the client id.
        body = (
            b"\x00\x04MQTT\x05\x02"
            + (600).to_bytes(2, "big")
            + b"\x00"
            + len(client_id).to_bytes(2, "big")
            + client_id
        )
        self._sock.sendall(b"\x10" + _varint(len(body)) + body)
        self._buffer = b""
        kind, ack = self._packet()
        if kind != 0x20 or ack[1] != 0:
            raise RuntimeError(f"CONNACK refused: {ack!r}")
        self._window = threading.Semaphore(window)
        self.acked = 0
        self.expected = 0
        self.done = threading.Event()
        self._reader = threading.Thread(target=self._read_acks, daemon=True)
        self._reader.start()

    def _packet(self) -> tuple[int, bytes]:
        """The next packet from the broker: (type nibble << 4, variable header + payload)."""
        while True:
            buf = self._buffer
            length, shift, i = 0, 0, 1
            while i < len(buf):
                length |= (buf[i] & 0x7F) << shift
                shift += 7
                i += 1
                if not buf[i - 1] & 0x80:
                    if len(buf) >= i + length:
                        self._buffer = buf[i + length :]
                        return buf[0] & 0xF0, buf[i : i + length]
                    break
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionError("broker closed the connection")
            self._buffer += chunk

    def _read_acks(self) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while True:
                kind, _ = self._packet()
                if kind == 0x40:  # PUBACK
                    self._window.release()
                    self.acked += 1
                    if self.acked >= self.expected:
                        self.done.set()

    def publish_all(self, messages: list[tuple[str, bytes]]) -> float:
        """Publish everything (returns when the last is sent); return the start."""
        self.acked = 0
        self.expected = len(messages)
        self.done.clear()
        start = time.monotonic()
        acquire, send = self._window.acquire, self._sock.sendall
        pending: list[bytes] = []
        for n, (topic, payload) in enumerate(messages):
            if not acquire(blocking=False):
                if pending:
                    send(b"".join(pending))
                    pending.clear()
                acquire()
            name = topic.encode()
            header = (
                len(name).to_bytes(2, "big") + name + (n % 65535 + 1).to_bytes(2, "big") + b"\x00"
            )
            pending.append(b"\x32" + _varint(len(header) + len(payload)) + header + payload)
            if len(pending) >= 64:
                send(b"".join(pending))
                pending.clear()
        if pending:
            send(b"".join(pending))
        return start

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.sendall(b"\xe0\x00")  # DISCONNECT
        self._sock.close()
        self._reader.join(5)


def purge_session(port: int, client_id: str) -> None:
    """Delete a stopped worker's persistent session, so its share group goes with it.

    Otherwise every later phase's messages are also queued for the dead session (memory and
    broker work that the next phase would pay for).
    """
    connected = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.on_connect = lambda *_a: connected.set()
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 0
    client.connect("127.0.0.1", port, clean_start=True, properties=props)
    client.loop_start()
    connected.wait(10)
    client.disconnect()
    client.loop_stop()


BARE_SUBSCRIBER = r"""
import sys, time, paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
port, topic, expected = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
n = 0
first = 0.0
def on_message(c, u, m):
    global n, first
    n += 1
    if n >= expected:
        print(time.time(), flush=True)
        c.disconnect()
def on_connect(c, u, f, rc, p):
    c.subscribe(topic, qos=1)
def on_subscribe(*a):
    print("ready", flush=True)
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-bare", protocol=mqtt.MQTTv5)
c.on_message, c.on_connect, c.on_subscribe = on_message, on_connect, on_subscribe
props = Properties(PacketTypes.CONNECT); props.ReceiveMaximum = 1000
c.connect("127.0.0.1", port, clean_start=True, properties=props)
c.loop_forever()
"""


def bench_broker_bare(mq: Mosquitto, messages: list[tuple[str, bytes]]) -> float:
    """Seconds from the first publish to the last message at a bare paho subscriber."""
    sub = subprocess.Popen(
        [
            PYTHON,
            "-c",
            BARE_SUBSCRIBER,
            str(mq.port),
            f"$share/bare/{ROOT}/v1/+/telemetry",
            str(len(messages)),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert sub.stdout is not None
    assert sub.stdout.readline().strip() == "ready"
    pub = Publisher(mq.port)
    try:
        start_wall = time.time()
        start = pub.publish_all(messages)
        end_wall = float(sub.stdout.readline())
        sub.wait(60)
        del start
        return end_wall - start_wall
    finally:
        pub.close()
        if sub.poll() is None:
            sub.kill()
            sub.wait()


def bench_influx_direct(
    ix: Influxd,
    db: str,
    batches: list[tuple[str, list[Reading]]],
    batch_size: int,
    concurrency: int,
) -> float:
    """Seconds to write pre-encoded line protocol for every reading straight into influxd."""
    ix.create_database(db)
    enc = LineProtocolEncoder()
    lines: list[bytes] = [enc.encode(gw, rs) for gw, rs in batches]
    bodies: list[bytes] = []
    per = max(1, batch_size // max(1, len(batches[0][1])))
    for i in range(0, len(lines), per):
        bodies.append(b"".join(lines[i : i + per]))

    async def run() -> float:
        async with httpx.AsyncClient(base_url=ix.url, timeout=60) as client:
            queue = list(reversed(bodies))

            async def writer() -> None:
                while queue:
                    body = queue.pop()
                    while True:
                        r = await client.post(
                            "/write", params={"db": db, "precision": "ns"}, content=body
                        )
                        if r.status_code == 204:
                            break
                        if r.status_code < 500:
                            raise RuntimeError(r.text)

            start = time.monotonic()
            async with asyncio.TaskGroup() as tg:
                for _ in range(concurrency):
                    tg.create_task(writer())
            return time.monotonic() - start

    return asyncio.run(run())


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


def bench_stages(messages: list[tuple[str, bytes]], readings: int) -> dict[str, float]:
    """CPU ns per reading of each pure step of the worker, best of 5, in this process."""
    import gc

    # This file is "ingest" on sys.path[0] (bench/): import the package from the repo instead.
    here = Path(__file__).resolve().parent
    sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != here]
    sys.modules.pop("ingest", None)
    from ingest._batcher import MessageDecoder
    from ingest._writer import _body
    from telemetry import Conformer, Intake
    from telemetry._codec import _batch_decoder, _check_batch_names

    def best(fn: Any) -> float:
        times = []
        for _ in range(5):
            gc.collect()
            start = time.process_time()
            fn()
            times.append(time.process_time() - start)
        return min(times) * 1e9 / readings

    payloads = [p for _, p in messages]
    batches = [_batch_decoder.decode(p) for p in payloads]
    now = time.time()
    now_ns = int(now * 1e9)
    topics = Topics(ROOT)
    enc = LineProtocolEncoder()
    out: dict[str, float] = {}
    out["msgspec_decode"] = best(lambda: [_batch_decoder.decode(p) for p in payloads])
    out["check_names"] = best(lambda: [_check_batch_names(b) for b in batches])

    def conform() -> None:
        c = Conformer(max_clock_skew_s=300, max_series_per_gateway=20_000)
        for b in batches:
            c.conform_all(b.readings, now_ns, gateway=b.gateway)

    out["conform"] = best(conform)
    out["line_protocol"] = best(lambda: [enc.line_list(b.gateway, b.readings) for b in batches])

    def intake() -> None:  # conform + line protocol in one pass, as the worker does
        i = Intake(max_clock_skew_s=300, max_series_per_gateway=20_000)
        for b in batches:
            i.encode(b.gateway, b.readings, now_ns)

    out["intake_conform_and_encode"] = best(intake)

    def decode_all() -> list[Any]:
        d = MessageDecoder(topics, worker="w", max_clock_skew=300, max_series_per_gateway=20_000)
        return [d.decode(t, p, dup=False, now=now)[0] for t, p in messages]

    out["message_decoder_total"] = best(decode_all)
    chunks = decode_all()
    out["request_body"] = best(
        lambda: [_body([c.lines for c in chunks[i : i + 50]]) for i in range(0, len(chunks), 50)]
    )
    return {k: round(v) for k, v in out.items()}


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
                before: dict[str, float] = {}
                if args.compare_repo is not None and run % 2 == 0:
                    before = bench_end_to_end(
                        mq,
                        ix,
                        f"before{run}",
                        messages,
                        args.readings,
                        args,
                        tmp,
                        Path(args.compare_repo).resolve(),
                    )
                e2e = bench_end_to_end(mq, ix, f"e2e{run}", messages, args.readings, args, tmp)
                if args.compare_repo is not None and run % 2 == 1:
                    before = bench_end_to_end(
                        mq,
                        ix,
                        f"before{run}",
                        messages,
                        args.readings,
                        args,
                        tmp,
                        Path(args.compare_repo).resolve(),
                    )
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
