"""CPU cost of the API's broker-message handling, per message, on the fleet's real messages.

Run by hand (not part of the tests)::

    .venv/bin/python bench/_api_live_handle.py [--seconds 4] [--rounds 7] [--profile FILE]

The end-to-end live run (bench/api.py) measures latency on a shared machine; this measures
what the latency is made of, without the noise: it records ``--seconds`` of the benchmark
fleet's messages (births and telemetry of 1,000 gateways) from a real mosquitto, then feeds
them to ``Services.handle`` in this process, one second's burst after the other, with one
WebSocket-like subscriber following one device (as in the live run). It prints medians over
``--rounds`` of CPU microseconds per message (the same numbers are milliseconds of loop time
per 1,000-message burst): ``handle_us_per_msg``, everything in line (``Services.handle``);
``take_us_per_msg``, what the broker's path (``Services.receive``) does before the next
message, i.e. what a followed reading waits for per message ahead of it in a burst;
``apply_us_per_msg``, the backlog applied after. ``--profile`` writes a cProfile of one
round of ``handle``.
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
    args = parser.parse_args()
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]

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
            services.handle(topic, payload)
    rounds: dict[str, list[float]] = {"handle": [], "take": [], "apply": []}
    profiler = cProfile.Profile() if args.profile is not None else None
    clock = time.process_time  # CPU time: other processes' load does not count
    for i in range(args.rounds * 2):
        # Every round's readings are newer than the last (the live state keeps only newer).
        batches = [(t, _shifted(p, (i + 1) * 10**12)) for t, p in telemetry]
        n = len(batches)
        if i % 2 == 0:
            if profiler is not None and i == args.rounds // 2 * 2:
                profiler.enable()
            start = clock()
            for topic, payload in batches:
                services.handle(topic, payload)
            rounds["handle"].append((clock() - start) / n * 1e6)
            if profiler is not None:
                profiler.disable()
        elif hasattr(services, "receive"):
            start = clock()
            for topic, payload in batches:
                services.receive(topic, payload)
            taken = clock()
            services.intake.flush()
            rounds["take"].append((taken - start) / n * 1e6)
            rounds["apply"].append((clock() - taken) / n * 1e6)
    if profiler is not None and args.profile is not None:
        profiler.dump_stats(args.profile)
    print(
        json.dumps(
            {
                **{
                    f"{k}_us_per_msg": round(statistics.median(v), 2)
                    for k, v in rounds.items()
                    if v
                },
                "handle_rounds_us": [round(x, 1) for x in rounds["handle"]],
                "live_series": len(services.live),
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
