"""Parts of bench/api.py: the ceilings' child processes, request paths, /metrics reading.

Imported by bench/api.py (run as a script, its directory is on ``sys.path``); imports
nothing of the project at module level.
"""

from __future__ import annotations

import urllib.request
from typing import Any
from urllib.parse import quote

GATEWAYS = 200
DATABASE = "bench"
#: The topic root of the API, the fleet and the probes.
ROOT = "bench"


BARE = """
import sys
import uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

body = sys.argv[2].encode()
thing = sys.argv[3].encode()


async def latest(request):
    if not request.headers.get("x-api-key"):
        return Response(status_code=401)
    return Response(body, media_type="application/json")


async def expanded(request):
    if not request.headers.get("x-api-key"):
        return Response(status_code=401)
    return Response(thing, media_type="application/json")


app = Starlette(routes=[Route("/v1/live/{gw}/{device}", latest), Route("/thing", expanded)])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools",
            log_config=None, access_log=False)
"""


BARE_SUBSCRIBER = r"""
import json, sys, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from telemetry import decode_batch

out = []


probe = sys.argv[3] if len(sys.argv) > 3 else sys.argv[2]


def on_message(_c, _u, msg):
    now = time.time_ns()
    if msg.topic != probe:
        return  # a fleet message (the subscriber to all telemetry): received, not timed
    for r in decode_batch(msg.payload).readings:
        out.append((now - r.fields["sent"]) / 1e6)


c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
c.on_message = on_message
c.connect("127.0.0.1", int(sys.argv[1]))
c.subscribe(sys.argv[2], qos=0)
c.loop_start()
sys.stdout.write("ready\n")
sys.stdout.flush()
sys.stdin.readline()
c.loop_stop()
sys.stdout.write(json.dumps(out) + "\n")
"""


FLEET = """
import sys
from simulators import FleetConfig, GatewayFleet
fleet = GatewayFleet(FleetConfig(gateways=1000, devices_per_gateway=5, interval_s=1.0,
                                 topic_root=sys.argv[1], port=int(sys.argv[2]), seed=7))
fleet.run(duration_s=float(sys.argv[3]))
"""


def sta_observations(i: int) -> str:
    """100 stored points of one air sensor's pm25 (every air device is number 3)."""
    g = i % GATEWAYS
    stream = quote(f"'sim-gw-{g:04d}:air-{g:04d}-3:AirQualityObserved.pm25'")
    return f"/sta/v1.1/Datastreams({stream})/Observations?%24top=100"


def influx_observations(i: int) -> str:
    """The same 100 points as one InfluxQL query straight to influxd (the ceiling)."""
    g = i % GATEWAYS
    where = f"\"gateway\" = 'sim-gw-{g:04d}' AND \"device\" = 'air-{g:04d}-3'"
    q = " ".join(("SELECT \"pm25\" FROM \"AirQualityObserved\" WHERE", where,
                  "ORDER BY time DESC LIMIT 100"))
    return f"/query?db={DATABASE}&epoch=ns&q={quote(q)}"


def sta_thing(i: int) -> str:
    g = i % GATEWAYS
    return f"/sta/v1.1/Things('sim-gw-{g:04d}')?%24expand={quote('Datastreams,Locations')}"


def scrape(url: str, key: str) -> str:
    request = urllib.request.Request(f"{url}/metrics", headers={"X-API-Key": key})  # noqa: S310
    with urllib.request.urlopen(request) as r:  # noqa: S310
        text: str = r.read().decode()
    return text


def _histogram(text: str, name: str) -> tuple[list[tuple[float, float]], float, float]:
    """An unlabelled histogram of a /metrics text: (le, cumulative count)..., sum, count."""
    buckets: list[tuple[float, float]] = []
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith(f'{name}_bucket{{le="'):
            le = line.split('"')[1]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.split()[1])))
        elif line.startswith(f"{name}_sum "):
            total = float(line.split()[1])
        elif line.startswith(f"{name}_count "):
            count = float(line.split()[1])
    return buckets, total, count


def counter(text: str, sample: str) -> float:
    return next((float(line.split()[1]) for line in text.splitlines()
                 if line.startswith(sample + " ")), 0.0)


def _between(before: str, after: str, name: str) -> dict[str, float]:
    """What a histogram took between two scrapes: count, mean and the bucket bounds under
    which 50 % / 99 % / all of the observations fell (in ms)."""
    b0, s0, c0 = _histogram(before, name)
    b1, s1, c1 = _histogram(after, name)
    low = dict(b0)
    buckets = [(le, n - low.get(le, 0.0)) for le, n in b1]
    count = c1 - c0

    def bound(q: float) -> float:
        for le, n in buckets:
            if count and n >= q * count:
                return le * 1000
        return float("nan")

    return {"count": count, "mean_ms": round((s1 - s0) / count * 1000, 4) if count else 0.0,
            "p50_le_ms": bound(0.5), "p99_le_ms": bound(0.99), "max_le_ms": bound(1.0)}


def breakdown(before: str, after: str, seconds: float) -> dict[str, Any]:
    """Where a live event's time went, from the API's histograms over the live run
    (``seconds`` long, the fleet's start included)."""
    telemetry = 'smartcity_api_mqtt_messages_total{kind="telemetry"}'
    msgs = counter(after, telemetry) - counter(before, telemetry)
    handle = _between(before, after, "smartcity_api_mqtt_handle_seconds")
    return {
        "telemetry_msgs_per_s": round(msgs / seconds, 1),
        "handle": handle,
        # The loop's time spent on broker messages per second: the fleet sends its second
        # in one burst, so a probe published in it waits up to about this long.
        "handle_ms_per_s": round(msgs / seconds * handle["mean_ms"], 1),
        "stream_delay": _between(before, after, "smartcity_api_stream_delay_seconds"),
        # Receipt to application of a batch (the followed readings were pushed at receipt).
        "apply_delay": _between(before, after, "smartcity_api_live_apply_delay_seconds"),
        "loop_lag": _between(before, after, "smartcity_api_event_loop_lag_seconds"),
        "gc_full_pause": _between(before, after, "smartcity_api_gc_full_pause_seconds"),
    }
