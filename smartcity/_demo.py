"""``smartcity demo``: the platform on one machine, from real processes.

Starts, in order (sinks first, sources last): mosquitto and influxd as child processes with
their data under ``var/``, an ingest worker (``python -m ingest run``), then a simulated fleet
of gateways publishing with the wire contract. Prints where to look, then a live status line.
Ctrl-C (or SIGTERM, or ``--duration``) stops sources first, lets ingest drain, then stops the
services; no process is left behind.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import FrameType

from api import ApiServer, ApiSettings
from simulators import FleetConfig, GatewayFleet
from smartcity._localstack import Influxd, Mosquitto, ServiceError, free_port

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


def _api_total(url: str, key: str) -> int | None:
    """``total`` of a paged API list, or None when the API does not answer."""
    request = urllib.request.Request(url, headers={"X-API-Key": key})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=2) as resp:  # noqa: S310
            total = json.loads(resp.read()).get("total")
    except (OSError, ValueError):
        return None
    return int(total) if isinstance(total, int) else None


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


def run_demo(
    *, var_dir: str = "var", duration: float = 0.0, gateways: int = 200, api_port: int = 0
) -> int:
    """Run the demo until Ctrl-C or ``duration`` seconds; return the exit code."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
    var = Path(var_dir).resolve()
    mosquitto = Mosquitto(data_dir=var / "mosquitto")
    influxd = Influxd(data_dir=var / "influxd")
    ingest: subprocess.Popen[bytes] | None = None
    api: ApiServer | None = None
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
        _say("starting the API (demo mode: loopback only, one key per role)")
        api = ApiServer(
            ApiSettings(
                demo=True,
                port=api_port or free_port(),
                mqtt_host=mosquitto.host,
                mqtt_port=mosquitto.port,
                mqtt_client_id="api-demo",
                topic_root=TOPIC_ROOT,
                influx_url=influxd.url,
                influx_database=DATABASE,
                database_url=f"sqlite:///{var / 'api.sqlite3'}",
            )
        )
        api.start()
        fleet = GatewayFleet(
            FleetConfig(
                gateways=gateways, topic_root=TOPIC_ROOT, host=mosquitto.host, port=mosquitto.port
            )
        )
        _say(f"starting a simulated fleet of {gateways} gateways (5 devices each, 1 s interval)")
        fleet_thread = threading.Thread(target=fleet.run, name="demo.fleet", daemon=True)
        fleet_thread.start()
        example = 'SELECT last(*) FROM "TrafficFlowObserved" GROUP BY device LIMIT 3'
        keys = api.services.demo_keys
        viewer = keys.get("viewer", "?")
        print(
            "\n"
            f"  API        {api.url}/docs   (OpenAPI)\n"
            f"  demo keys  "
            + "  ".join(f"{role}={key}" for role, key in sorted(keys.items()))
            + "\n"
            f"  try        curl -H 'X-API-Key: {viewer}' {api.url}/v1/transport/vehicles\n"
            f"  broker     {mosquitto.url}   (topics {TOPIC_ROOT}/v1/<gateway>/...)\n"
            f"  InfluxDB   {influxd.url}   database '{DATABASE}'\n"
            f"  InfluxQL   curl -G {influxd.url}/query --data-urlencode db={DATABASE} "
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
            online = _api_total(f"{api.url}/v1/gateways?state=online&limit=1", viewer)
            alerts = _api_total(f"{api.url}/v1/alerts?limit=1", viewer)
            print(
                f"\r[demo] {rate:8.0f} readings/s stored | {sent:9d} sent | "
                f"{'?' if online is None else online} gateways online | "
                f"{'?' if alerts is None else alerts} alerts | "
                f"up {time.monotonic() - started:5.0f}s",
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
        if api is not None:
            api.stop()
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
