"""``smartcity demo``: the platform on one machine, from real processes.

Starts, in order (sinks first, sources last): mosquitto and influxd as child processes with
their data under ``var/``, an ingest worker (``python -m ingest run``), then a simulated fleet
of gateways publishing with the wire contract. Prints where to look, then a live status line.
Ctrl-C (or SIGTERM, or ``--duration``) stops sources first, lets ingest drain, then stops the
services; no process is left behind.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from simulators import FleetConfig, GatewayFleet
from smartcity._localstack import Influxd, Mosquitto, ServiceError

__all__ = ["run_demo"]

DATABASE = "city"
TOPIC_ROOT = "sc"
_MEASUREMENTS = (
    "TrafficFlowObserved",
    "Vehicle",
    "OffStreetParking",
    "AirQualityObserved",
    "ThreePhaseAcMeasurement",
)


def _say(step: str) -> None:
    print(f"[demo] {step}", flush=True)


def _stored_points(influxd: Influxd, seconds: int | None = None) -> int:
    """Points stored in the demo database, all of them or those of the last ``seconds``."""
    where = f" WHERE time > now() - {int(seconds)}s" if seconds else ""
    total = 0
    for m in _MEASUREMENTS:
        answer = influxd.query(f'SELECT count("quality") FROM "{m}"{where}', db=DATABASE)  # noqa: S608
        series = answer["results"][0].get("series")
        if series:
            total += int(series[0]["values"][0][1])
    return total


def _wait_for_log(
    log: Path, marker: str, proc: subprocess.Popen[bytes], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(f"{log.stem} exited with {proc.returncode}; see {log}")
        with contextlib.suppress(OSError):
            if marker in log.read_text(errors="replace"):
                return
        time.sleep(0.1)
    raise ServiceError(f"{log.stem} did not start within {timeout}s; see {log}")


def _drain_and_report(influxd: Influxd, sent: int, timeout: float = 20.0) -> None:
    """Sources are stopped: wait for ingest to store everything, then say how it went."""
    deadline = time.monotonic() + timeout
    stored = -1
    while time.monotonic() < deadline:
        try:
            stored = _stored_points(influxd)
        except (ServiceError, OSError):
            break
        if stored >= sent:
            break
        time.sleep(0.5)
    _say(f"sent {sent} readings, stored {stored} (lost {max(sent - stored, 0)})")


def _raise_interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_demo(*, var_dir: str = "var", duration: float = 0.0, gateways: int = 200) -> int:
    """Run the demo until Ctrl-C or ``duration`` seconds; return the exit code."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
    var = Path(var_dir).resolve()
    mosquitto = Mosquitto(data_dir=var / "mosquitto")
    influxd = Influxd(data_dir=var / "influxd")
    ingest: subprocess.Popen[bytes] | None = None
    fleet: GatewayFleet | None = None
    fleet_thread: threading.Thread | None = None
    try:
        _say(f"starting mosquitto on {mosquitto.url} (data in {mosquitto.data_dir})")
        mosquitto.start()
        _say(f"starting influxd on {influxd.url} (data in {influxd.data_dir})")
        influxd.start()
        influxd.create_database(DATABASE)
        _say("starting ingest worker ingest-0")
        ingest_log = (var / "ingest.log").open("ab")
        ingest = subprocess.Popen(
            [
                sys.executable, "-m", "ingest", "run",
                "--mqtt-host", mosquitto.host, "--mqtt-port", str(mosquitto.port),
                "--client-id", "ingest-0", "--topic-root", TOPIC_ROOT,
                "--influx-url", influxd.url, "--database", DATABASE,
                "--log-format", "json",
            ],
            stdout=ingest_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        ingest_log.close()
        # Sinks first, sources last: on a first start the worker has no persistent session
        # yet, so anything published before it subscribed would go to nobody.
        _wait_for_log(var / "ingest.log", '"ingest worker started"', ingest, timeout=60)
        fleet = GatewayFleet(
            FleetConfig(
                gateways=gateways, topic_root=TOPIC_ROOT, host=mosquitto.host, port=mosquitto.port
            )
        )
        _say(f"starting a simulated fleet of {gateways} gateways (5 devices each, 1 s interval)")
        fleet_thread = threading.Thread(target=fleet.run, name="demo.fleet", daemon=True)
        fleet_thread.start()
        example = 'SELECT last(*) FROM "TrafficFlowObserved" GROUP BY device LIMIT 3'
        print(
            "\n"
            f"  broker     {mosquitto.url}   (topics {TOPIC_ROOT}/v1/<gateway>/...)\n"
            f"  InfluxDB   {influxd.url}   database '{DATABASE}'\n"
            f"  try        curl -G {influxd.url}/query --data-urlencode db={DATABASE} "
            f"--data-urlencode 'q={example}'\n"
            f"  logs       {var}/*.log\n"
            "  stop       Ctrl-C\n",
            flush=True,
        )
        started = time.monotonic()
        while duration <= 0 or time.monotonic() - started < duration:
            time.sleep(2.0)
            if ingest.poll() is not None:
                _say(f"ingest exited with {ingest.returncode}; see {var}/ingest.log")
                return 1
            try:
                rate = _stored_points(influxd, 10) / 10
            except (ServiceError, OSError) as exc:
                rate = float("nan")
                _say(f"InfluxDB query failed: {exc}")
            sent = fleet.ledger.readings
            print(
                f"\r[demo] {rate:8.0f} readings/s stored | {sent:9d} sent | "
                f"{gateways} gateways online | up {time.monotonic() - started:5.0f}s",
                end="",
                flush=True,
            )
        print()
        return 0
    except KeyboardInterrupt:
        print()
        _say("stopping")
        return 0
    except ServiceError as exc:
        _say(f"error: {exc}")
        return 1
    finally:
        if fleet is not None:
            fleet.stop()
        if fleet_thread is not None:
            fleet_thread.join(timeout=15)
        if fleet is not None and ingest is not None and ingest.poll() is None:
            _drain_and_report(influxd, fleet.ledger.readings)
        if ingest is not None and ingest.poll() is None:
            ingest.send_signal(signal.SIGTERM)
            try:
                ingest.wait(timeout=20)
            except subprocess.TimeoutExpired:
                ingest.kill()
                ingest.wait()
        with contextlib.suppress(ServiceError):
            influxd.stop()
        with contextlib.suppress(ServiceError):
            mosquitto.stop()
        _say("stopped")
