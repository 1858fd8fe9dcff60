"""The ingest benchmark's ceilings: a bare paho subscriber (the broker + client limit) and
pre-encoded line protocol written straight into influxd (the database limit).

Imported by bench/ingest.py (run as a script, its directory is on ``sys.path``).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import httpx
from _ingest_publisher import Publisher

from smartcity._localstack import Influxd, Mosquitto
from telemetry import LineProtocolEncoder, Reading

__all__ = ["ROOT", "bench_broker_bare", "bench_influx_direct"]

ROOT = "bench"
PYTHON = sys.executable


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
