"""``smartcity demo``: the whole platform on one machine, from real processes.

Starts, sinks first and sources last::

    mosquitto (central) + influxd          child processes, data under var/
    ingest worker ingest-0                 python -m ingest run
    API (demo mode, loopback, dashboard)   in this process, on a thread
    mosquitto (gateways' local broker)     for the local MQTT sensors
    device city                            ptys (firmware protocol, NMEA), Modbus TCP
                                           meters, JSON sensors on the local broker
    4 edge agents                          python -m edge_agent run, reading those devices
    simulated fleet (scenario "city")      ~200 gateways straight onto the central broker

then prints where to look and a live status line. Ctrl-C (or SIGTERM, or ``--duration``)
stops sources first, lets ingest store what was sent, reports sent vs stored, and stops
everything else; no process is left behind.
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
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

from api import ApiServer, ApiSettings, MqttSettings
from foundation import configure_logging
from simulators import (
    DeviceCity,
    FleetConfig,
    GatewayFleet,
    ScenarioError,
    export_areas,
    export_gtfs,
    load_scenario,
)
from smartcity._demo_edge import EDGE_PREFIX, edge_configs, write_configs
from smartcity._localstack import Influxd, Mosquitto, ServiceError, free_port

__all__ = ["run_demo"]

DATABASE = "city"
TOPIC_ROOT = "sc"
_MEASUREMENTS = (
    "TrafficFlowObserved",
    "Vehicle",
    "OffStreetParking",
    "AirQualityObserved",
    "NoiseLevelObserved",
    "WaterConsumptionObserved",
    "ThreePhaseAcMeasurement",
)


def _say(step: str) -> None:
    print(f"[demo] {step}", flush=True)


def _stored_points(
    influxd: Influxd, *, seconds: int | None = None, edge: bool | None = None
) -> int:
    """Points in the demo database: all, the last ``seconds``, the fleet's or the agents'."""
    where = []
    if seconds:
        where.append(f"time > now() - {int(seconds)}s")
    if edge is not None:
        where.append(f"gateway {'=~' if edge else '!~'} /^{EDGE_PREFIX}/")
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    total = 0
    for m in _MEASUREMENTS:
        answer = influxd.query(f'SELECT count("quality") FROM "{m}"{clause}', db=DATABASE)  # noqa: S608
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


def _wait_for_log(log: Path, marker: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(f"{log.stem} exited with {proc.returncode}; see {log}")
        with contextlib.suppress(OSError):
            if marker in log.read_text(errors="replace"):
                return
        time.sleep(0.1)
    raise ServiceError(f"{log.stem} did not start within {timeout}s; see {log}")


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        # Own process group: a terminal's Ctrl-C reaches the demo only, which then stops
        # its children in order (sources first, ingest after it has stored what was sent).
        return subprocess.Popen(
            [sys.executable, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            process_group=0,
        )


def _terminate(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _drain_and_report(influxd: Influxd, sent: int, timeout: float = 20.0) -> None:
    """Sources are stopped: wait for ingest to store everything, then say how it went."""
    deadline = time.monotonic() + timeout
    stored = -1
    while time.monotonic() < deadline:
        try:
            stored = _stored_points(influxd, edge=False)
        except (ServiceError, OSError):
            break
        if stored >= sent:
            break
        time.sleep(0.5)
    edge = -1
    with contextlib.suppress(ServiceError, OSError):
        edge = _stored_points(influxd, edge=True)
    _say(f"fleet: sent {sent} readings, stored {stored} (lost {max(sent - stored, 0)})")
    _say(f"edge agents: stored {edge} readings from real devices")


def _raise_interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_demo(
    *,
    var_dir: str = "var",
    duration: float = 0.0,
    scenario: str = "city",
    api_port: int = 0,
) -> int:
    """Run the demo until Ctrl-C or ``duration`` seconds; return the exit code."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
    configure_logging("WARNING")
    # On a terminal the status line rewrites itself; in a log it is one line per update.
    line_end = "\r" if sys.stdout.isatty() else "\n"
    var = Path(var_dir).resolve()
    mosquitto = Mosquitto(data_dir=var / "mosquitto")
    local_broker = Mosquitto(data_dir=var / "mosquitto-local")
    influxd = Influxd(data_dir=var / "influxd")
    processes: list[subprocess.Popen[bytes]] = []
    fleet: GatewayFleet | None = None
    fleet_thread: threading.Thread | None = None
    with ExitStack() as stack:
        stack.callback(_say, "stopped")  # runs last, once everything below has stopped
        try:
            _say(f"starting mosquitto on {mosquitto.url} (data in {mosquitto.data_dir})")
            stack.callback(mosquitto.stop)
            mosquitto.start()
            _say(f"starting influxd on {influxd.url} (data in {influxd.data_dir})")
            stack.callback(influxd.stop)
            influxd.start()
            influxd.create_database(DATABASE)

            _say("starting ingest worker ingest-0")
            ingest = _spawn(
                ["-m", "ingest", "run",
                 "--mqtt-host", mosquitto.host, "--mqtt-port", str(mosquitto.port),
                 "--client-id", "ingest-0", "--topic-root", TOPIC_ROOT,
                 "--influx-url", influxd.url, "--database", DATABASE, "--log-format", "json"],
                var / "ingest.log",
            )  # fmt: skip
            processes.append(ingest)
            # Sinks first, sources last: on a first start the worker has no persistent
            # session yet, so anything published before it subscribed would go to nobody.
            _wait_for_log(var / "ingest.log", '"ingest worker started"', ingest, timeout=60)

            # The simulated buses' timetable, for schedule adherence and TripUpdates.
            gtfs: Path | None = var / "gtfs.zip"
            try:
                export_gtfs(load_scenario(scenario), var / "gtfs.zip", days=30)
            except ScenarioError:  # a scenario without buses has no timetable
                gtfs = None
            # The city's areas, so that a bus is in the area it drives through.
            areas = var / "areas.json"
            export_areas(load_scenario(scenario), areas)
            _say("starting the API (demo mode: loopback only, one key per role)")
            api = ApiServer(
                ApiSettings(
                    demo=True,
                    port=api_port or free_port(),
                    mqtt=MqttSettings(
                        host=mosquitto.host, port=mosquitto.port, client_id="api-demo"
                    ),
                    topic_root=TOPIC_ROOT,
                    influx_url=influxd.url,
                    influx_database=DATABASE,
                    database_url=f"sqlite:///{var / 'api.sqlite3'}",
                    city_timezone=load_scenario(scenario).city.timezone,
                    gtfs_static_path=gtfs,
                    areas_path=areas,
                )
            )
            api.start()
            stack.callback(api.stop)
            keys = api.services.demo_keys
            viewer = keys.get("viewer", "?")

            _say(f"starting the gateways' local broker on {local_broker.url}")
            stack.callback(local_broker.stop)
            local_broker.start()
            _say("starting simulated devices: ptys, Modbus TCP meters, local MQTT sensors")
            city_scenario = load_scenario(scenario)
            devices = stack.enter_context(
                DeviceCity(city_scenario, directory=var / "devices", mqtt_url=local_broker.url)
            )
            configs = write_configs(
                edge_configs(
                    devices.endpoints,
                    broker=(mosquitto.host, mosquitto.port),
                    topic_root=TOPIC_ROOT,
                    state=var / "edge" / "state",
                ),
                var / "edge",
            )
            for gateway, path in configs.items():
                _say(f"starting edge agent {gateway} ({path.name})")
                processes.append(
                    _spawn(
                        ["-m", "edge_agent", "run", "--config", str(path), "--log-format", "json"],
                        var / "edge" / f"{gateway}.log",
                    )
                )

            fleet = GatewayFleet(
                FleetConfig(
                    scenario=city_scenario,
                    topic_root=TOPIC_ROOT,
                    host=mosquitto.host,
                    port=mosquitto.port,
                    # Ingest subscribes: a batch routed to nobody is kept, as gateways do.
                    retry_unrouted=True,
                )
            )
            _say(
                f"starting the simulated fleet: scenario '{scenario}' "
                f"({len(fleet.gateway_ids)} gateways)"
            )
            fleet_thread = threading.Thread(target=fleet.run, name="demo.fleet", daemon=True)
            fleet_thread.start()

            example = 'SELECT last(*) FROM "TrafficFlowObserved" GROUP BY device LIMIT 3'
            print(
                "\n"
                f"  dashboard  {api.url}/dashboard/#key={viewer}\n"
                f"             (or sign in with a key below; operator acknowledges alerts)\n"
                f"  API        {api.url}/docs   (OpenAPI)\n"
                "  demo keys  "
                + "  ".join(f"{role}={key}" for role, key in sorted(keys.items()))
                + "\n"
                f"  try        curl -H 'X-API-Key: {viewer}' {api.url}/v1/transport/vehicles\n"
                f"  broker     {mosquitto.url}   (topics {TOPIC_ROOT}/v1/<gateway>/...)\n"
                f"  InfluxDB   {influxd.url}   database '{DATABASE}'\n"
                f"  InfluxQL   curl -G {influxd.url}/query --data-urlencode db={DATABASE} "
                f"--data-urlencode 'q={example}'\n"
                f"  edge       {', '.join(configs)} (configs and logs in {var / 'edge'})\n"
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
                    rate = _stored_points(influxd, seconds=10) / 10
                except (ServiceError, OSError) as exc:
                    rate = float("nan")
                    _say(f"InfluxDB query failed: {exc}")
                online = _api_total(f"{api.url}/v1/gateways?state=online&limit=1", viewer)
                alerts = _api_total(f"{api.url}/v1/alerts?limit=1", viewer)
                print(
                    f"[demo] {rate:8.0f} readings/s stored | "
                    f"{fleet.ledger.readings:9d} sent by the fleet | "
                    f"{'?' if online is None else online} gateways online | "
                    f"{'?' if alerts is None else alerts} alerts | "
                    f"up {time.monotonic() - started:5.0f}s",
                    end=line_end,
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
            # Sources first: the fleet and the edge agents (SIGTERM flushes their spools).
            if fleet is not None:
                fleet.stop()
            if fleet_thread is not None:
                fleet_thread.join(timeout=30)
            for proc in processes[1:]:
                _terminate(proc)
            if fleet is not None and processes and processes[0].poll() is None:
                _drain_and_report(influxd, fleet.ledger.readings)
            if processes:
                _terminate(processes[0])
            # The ExitStack then stops the devices, the local broker, the API, influxd and
            # mosquitto, in reverse order of start.
