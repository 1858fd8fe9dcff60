"""CPU cost of the API's broker-message handling, per message, on the fleet's real messages.

Run by hand (not part of the tests)::

    .venv/bin/python bench/_api_live_handle.py [--seconds 4] [--rounds 7] [--profile FILE]

The end-to-end live run (bench/api.py) measures latency on a shared machine; this measures
what the latency is made of, without the noise: it records ``--seconds`` of the benchmark
fleet's messages (births and telemetry of 1,000 gateways) from a real mosquitto, then feeds
them to ``Services.receive`` in this process, one second's burst after the other, with one
WebSocket-like subscriber following one device (as in the live run). It prints medians over
``--rounds`` of CPU microseconds per message (the same numbers are milliseconds of loop time
per 1,000-message burst): ``inline_us_per_msg``, everything in line (each message received
and the intake drained at once); ``take_us_per_msg``, what the broker's path does before the
next message, i.e. what a followed reading waits for per message ahead of it in a burst;
``apply_us_per_msg``, the backlog applied after; ``birth_ms``, one gateway's birth received
while the recording's telemetry is queued (``birth_queued`` batches): what that birth holds
the loop for. ``--profile`` writes a cProfile of one round in line.

``--fanout`` measures instead what pushing alerts to live clients costs the API's loop: the
app served by uvicorn in this process (as ``api run`` serves it: uvloop, httptools, the
sans-I/O WebSocket), ``--clients`` WebSocket clients in another process following one
device (as the live run's probe; alerts pass a device filter; permessage-deflate offered, as
browsers do), ``--alerts`` alert events
published into the hub ``--burst`` at a time per loop turn (as the intake raises them in one
apply slice). It prints this process's CPU microseconds per alert per client
(``fanout_us_per_alert_client``, medians over ``--rounds``), until every client has them all.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _api_parts import FLEET, ROOT


def record(seconds: float) -> list[tuple[str, bytes]]:
    """The messages the fleet publishes in ``seconds`` (retained births included)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from smartcity._localstack import Mosquitto

    messages: list[tuple[str, bytes]] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-handle-") as tmp,
        Mosquitto(data_dir=Path(tmp) / "mosquitto") as broker,
    ):
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        client.on_message = lambda _c, _u, msg: messages.append((msg.topic, msg.payload))
        client.connect(broker.host, broker.port)
        client.subscribe(f"{ROOT}/#", qos=0)
        client.loop_start()
        time.sleep(0.5)
        fleet = subprocess.Popen(
            [sys.executable, "-c", FLEET, ROOT, str(broker.port), str(seconds)]
        )
        fleet.wait(seconds + 60)
        time.sleep(0.5)
        client.loop_stop()
        client.disconnect()
    return messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--profile", type=Path, default=None)
    parser.add_argument("--fanout", action="store_true", help="alerts to WebSocket clients")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--alerts", type=int, default=5000)
    parser.add_argument("--burst", type=int, default=10)
    args = parser.parse_args()
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    if args.fanout:
        fanout(args)
        return

    from api import ApiSettings, create_app
    from api.state import parse_filter

    messages = record(args.seconds)
    telemetry = [m for m in messages if "/telemetry" in m[0]]
    print(f"recorded {len(messages)} messages ({len(telemetry)} telemetry)", flush=True)
    app = create_app(ApiSettings(database_url="sqlite://", topic_root=ROOT))
    services = app.state.services
    services.hub.subscribe(parse_filter([], ["probe"], []))
    for topic, payload in messages:  # births first: the inventory as in the live run
        if "/telemetry" not in topic:
            services.receive(topic, payload)
    rounds: dict[str, list[float]] = {"inline": [], "take": [], "apply": [], "birth": []}
    profiler = cProfile.Profile() if args.profile is not None else None
    clock = time.process_time  # CPU time: other processes' load does not count
    shift = 0
    for i in range(args.rounds * 2):
        # Every round's readings are newer than the last (the live state keeps only newer).
        shift += 10**12
        batches = [(t, _shifted(p, shift)) for t, p in telemetry]
        n = len(batches)
        if i % 2 == 0:
            if profiler is not None and i == args.rounds // 2 * 2:
                profiler.enable()
            start = clock()
            for topic, payload in batches:
                services.receive(topic, payload)
                services.intake.flush()
            rounds["inline"].append((clock() - start) / n * 1e6)
            if profiler is not None:
                profiler.disable()
        else:
            start = clock()
            for topic, payload in batches:
                services.receive(topic, payload)
            taken = clock()
            services.intake.flush()
            rounds["take"].append((taken - start) / n * 1e6)
            rounds["apply"].append((clock() - taken) / n * 1e6)
    births = [m for m in messages if m[0].endswith("/status") and m[1]]
    queued = 0
    for i in range(args.rounds):
        shift += 10**12
        for topic, payload in telemetry:
            services.receive(topic, _shifted(payload, shift))
        queued = len(services.intake)
        topic, payload = births[(i * 97 + len(births) // 2) % len(births)]
        start = clock()
        services.receive(topic, payload)
        rounds["birth"].append((clock() - start) * 1e3)
        services.intake.flush()
    if profiler is not None and args.profile is not None:
        profiler.dump_stats(args.profile)
    print(
        json.dumps(
            {
                **{
                    f"{k}_us_per_msg": round(statistics.median(v), 2)
                    for k, v in rounds.items()
                    if v and k != "birth"
                },
                "inline_rounds_us": [round(x, 1) for x in rounds["inline"]],
                "birth_ms": round(statistics.median(rounds["birth"]), 3),
                "birth_rounds_ms": [round(x, 3) for x in rounds["birth"]],
                "birth_queued": queued,
                "live_series": len(services.live),
            }
        ),
        flush=True,
    )


_FANOUT_CLIENTS = r"""
import contextlib, json, sys, threading
from websockets.sync.client import connect

url, key, clients, alerts = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
stack = contextlib.ExitStack()
sockets = [stack.enter_context(connect(url, additional_headers={"X-API-Key": key},
                                       max_queue=None)) for _ in range(clients)]
for ws in sockets:
    assert json.loads(ws.recv(timeout=5))["type"] == "hello"
print("ready", flush=True)


while sys.stdin.readline():
    def one(ws):
        for _ in range(alerts):
            while json.loads(ws.recv(timeout=30))["type"] != "alert":
                pass
    threads = [threading.Thread(target=one, args=(ws,)) for ws in sockets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("done", flush=True)
"""


def fanout(args: argparse.Namespace) -> None:
    """CPU of this process per alert per WebSocket client (see the module's docstring)."""
    import asyncio

    import uvicorn
    import uvloop

    from api import ApiSettings, create_app
    from api.state import Event
    from foundation import free_port

    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmp:
        settings = ApiSettings(
            database_url=f"sqlite:///{tmp}/api.db", topic_root=ROOT, stream_max_per_key=1000
        )
        app = create_app(settings)
        services = app.state.services
        services.db.create_schema()
        _, key = services.db.create_key(name="bench", role="viewer")
        port = free_port("127.0.0.1")
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            loop="uvloop",
            http="httptools",
            ws="websockets-sansio",
            log_config=None,
            access_log=False,
            lifespan="off",
        )
        alert = {
            "type": "alert",
            "state": "raised",
            "alert": {
                "id": "c0ffee" * 4,
                "rule_id": 3,
                "rule": "Link speed under 30% of free flow",
                "kind": "congestion",
                "severity": "warning",
                "gateway": "gw-0421",
                "device": "loop-0421-2",
                "measurement": "TrafficFlowObserved",
                "field": "averageVehicleSpeed",
                "value": 11.5,
                "threshold": 15.0,
                "started": "2026-01-01T07:31:04Z",
                "started_ns": 1_767_252_664_000_000_000,
                "message": "speed 11.5 km/h under 15 km/h (30 % of free flow)",
                "area": "centre",
                "acknowledged": False,
                "ack_by": None,
                "ack_at": None,
                "ack_note": None,
            },
        }
        data = json.dumps(alert).encode()

        async def run() -> list[float]:
            server = uvicorn.Server(config)
            serving = asyncio.create_task(server.serve())
            for _ in range(1000):
                if server.started:
                    break
                await asyncio.sleep(0.01)
            else:
                raise SystemExit("the API did not start")
            url = f"ws://127.0.0.1:{port}/v1/stream/ws?device=probe"
            clients = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _FANOUT_CLIENTS,
                url,
                key,
                str(args.clients),
                str(args.alerts),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            assert clients.stdin is not None
            assert clients.stdout is not None
            if (await clients.stdout.readline()).strip() != b"ready":
                raise SystemExit("the WebSocket clients did not start")
            profiler = cProfile.Profile() if args.profile is not None else None
            per: list[float] = []
            for i in range(args.rounds):
                clients.stdin.write(b"go\n")
                await clients.stdin.drain()
                await asyncio.sleep(0.2)  # the client's threads reading
                if profiler is not None and i == args.rounds // 2:
                    profiler.enable()
                start = time.process_time()
                for n in range(args.alerts):
                    services.hub.publish(Event("alert", "loop-0421-2", "gw-0421", "centre", data))
                    if n % args.burst == args.burst - 1:
                        await asyncio.sleep(0)
                if (await clients.stdout.readline()).strip() != b"done":
                    raise SystemExit("a WebSocket client failed")
                per.append((time.process_time() - start) / args.alerts / args.clients * 1e6)
                if profiler is not None:
                    profiler.disable()
            if profiler is not None:
                profiler.dump_stats(args.profile)
            clients.stdin.close()
            await clients.wait()
            server.should_exit = True
            await serving
            return per

        per = uvloop.run(run())
    print(
        json.dumps(
            {
                "fanout_us_per_alert_client": round(statistics.median(per), 2),
                "fanout_rounds_us": [round(x, 2) for x in per],
                "clients": args.clients,
                "alerts": args.alerts,
                "burst": args.burst,
            }
        ),
        flush=True,
    )


def _shifted(payload: bytes, shift: int) -> bytes:
    """The same batch with every reading ``shift`` ns later."""
    import msgspec

    from telemetry import decode_batch, encode_batch

    batch = decode_batch(payload)
    readings = [msgspec.structs.replace(r, ts=r.ts + shift) for r in batch.readings]
    return encode_batch(msgspec.structs.replace(batch, readings=readings))


if __name__ == "__main__":
    main()
