"""``smartcity demo --cluster``: the city on the cluster profile (docs/cluster.md).

Starts, sinks first and sources last::

    NATS JetStream cluster, 3 nodes        MQTT 3.1.1 on each; users from a sync per node
    smartcity nats users-sync x 3          the enrolled gateways into each node's users
    influxd a, influxd b                   two InfluxDB replicas, data under var/cluster/
    ingest worker ingest-a0                durable consumer "ingest-a" ─▶ influxd a
    ingest worker ingest-b0                durable consumer "ingest-b" ─▶ influxd b
    API (demo mode)                        live feed from the cluster; reads the replica
                                           that has caught up (influx_replicas a, b);
                                           enrolment.nats (the gateway-users bucket)
    device city + 4 edge agents            each enrolled as an engineer would: a claim token
                                           from the API, `smartcity edge enroll` (its own
                                           NATS user); uplink mqtt311, failover over 3 nodes
    simulated fleet (scenario "city")      MQTT 3.1.1, gateways spread over the nodes (static
                                           users: a load, not an installation)

and prints where to look and a status line (readings stored per replica, the replica the
API reads, each replica's consumer lag). Ctrl-C stops sources first, lets both replicas
store what was sent, reports sent vs stored per replica, and stops everything else.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import yaml

from api import ApiServer, ApiSettings, InfluxReplica, MqttSettings
from foundation import configure_logging
from simulators import (
    DeviceCity,
    FleetConfig,
    GatewayFleet,
    ScenarioError,
    build_layout,
    export_areas,
    export_gtfs,
    load_scenario,
)
from smartcity._demo import (
    DATABASE,
    TOPIC_ROOT,
    _api_total,
    _raise_interrupt,
    _say,
    _spawn,
    _stored_points,
    _terminate,
    _wait_for_log,
)
from smartcity._demo_edge import edge_configs, write_configs
from smartcity._localstack import Influxd, Mosquitto, ServiceError, free_port
from smartcity._localstack_nats import NatsCluster, NatsUser

__all__ = ["run_cluster_demo"]

_REPLICAS = ("a", "b")


def _secret(path: Path, value: str) -> Path:
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


def _worker_config(cluster: NatsCluster, replica: str, store: Influxd, secret: Path) -> str:
    return json.dumps({
        "source": "jetstream",
        "jetstream": {"servers": cluster.urls, "username": "ingest",
                      "password_file": str(secret), "durable": f"ingest-{replica}"},
        "mqtt": {"client_id": f"ingest-{replica}0", "topic_root": TOPIC_ROOT},
        "influx": {"url": store.url, "database": DATABASE},
        "log_format": "json",
    })  # fmt: skip


def _enrol(api: str, engineer: str, gateway: str, out: Path) -> dict[str, Any]:
    """Register ``gateway`` with the engineer key (revoked first when an earlier run
    enrolled it) and redeem its token with ``smartcity edge enroll`` into ``out`` (its log
    there too); the broker block it wrote."""

    def call(method: str) -> Any:
        request = urllib.request.Request(  # noqa: S310 (the demo's own API)
            f"{api}/v1/gateways/{gateway}/enrolment", method=method,
            headers={"X-API-Key": engineer},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310
            return json.loads(resp.read())

    try:
        try:
            token = str(call("POST")["token"])
        except urllib.error.HTTPError as exc:
            if exc.code != 409:
                raise
            call("DELETE")
            token = str(call("POST")["token"])
    except (OSError, ValueError, KeyError) as exc:
        raise ServiceError(f"registering {gateway} for enrolment: {exc}") from exc
    out.mkdir(parents=True, exist_ok=True)
    log = out / "enroll.log"
    proc = _spawn(["-m", "smartcity", "edge", "enroll", "--api", api, "--token", token,
                   "--out", str(out)], log)  # fmt: skip
    if proc.wait(timeout=60) != 0:
        raise ServiceError(f"smartcity edge enroll {gateway} exited with {proc.returncode}; "
                           f"see {log}")  # fmt: skip
    block = yaml.safe_load((out / "broker.yaml").read_text())["broker"]
    return dict(block)


def _health(url: str, key: str) -> dict[str, Any] | None:
    request = urllib.request.Request(f"{url}/v1/health", headers={"X-API-Key": key})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=2) as resp:  # noqa: S310
            answer = json.loads(resp.read())
    except (OSError, ValueError):
        return None
    return answer if isinstance(answer, dict) else None


def _replica_line(health: dict[str, Any] | None) -> str:
    if health is None:
        return "API health ?"
    influx = health.get("influxdb", {})
    lags = " ".join(
        f"{r['name']}:{'down' if not r['healthy'] else r['lag']}"
        for r in influx.get("replicas", [])
    )
    return f"API reads {influx.get('reading_from', '?')} (lag {lags})"


def _drain_and_report(stores: dict[str, Influxd], sent: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    stored = dict.fromkeys(stores, -1)
    while time.monotonic() < deadline:
        try:
            stored = {r: _stored_points(s, edge=False) for r, s in stores.items()}
        except (ServiceError, OSError):
            break
        if all(n >= sent for n in stored.values()):
            break
        time.sleep(0.5)
    for replica, n in stored.items():
        _say(f"replica {replica}: fleet sent {sent} readings, stored {n} (lost {max(sent - n, 0)})")


def run_cluster_demo(
    *, var_dir: str = "var", duration: float = 0.0, scenario: str = "city", api_port: int = 0
) -> int:
    """Run the cluster demo until Ctrl-C or ``duration`` seconds; return the exit code."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
    configure_logging("WARNING")
    line_end = "\r" if sys.stdout.isatty() else "\n"
    var = Path(var_dir).resolve() / "cluster"
    var.mkdir(parents=True, exist_ok=True)
    city = load_scenario(scenario)
    passwords = {gw: secrets.token_urlsafe(18) for gw in build_layout(city).gateway_ids}
    ingest_user = NatsUser(name="ingest", password=secrets.token_urlsafe(18), role="service")
    api_user = NatsUser(name="api", password=secrets.token_urlsafe(18), role="service")
    sync_user = NatsUser(name="users-sync", password=secrets.token_urlsafe(18), role="service")
    cluster = NatsCluster(
        data_dir=var / "nats", topic_root=TOPIC_ROOT,
        users=[*(NatsUser(name=g, password=p) for g, p in passwords.items()),
               ingest_user, api_user, sync_user],
        users_sync=True,
    )  # fmt: skip
    stores = {r: Influxd(data_dir=var / f"influxd-{r}") for r in _REPLICAS}
    (host, port), *others = [(n.host, n.mqtt_port) for n in cluster.nodes]
    fleet = GatewayFleet(FleetConfig(
        scenario=city, topic_root=TOPIC_ROOT, protocol="mqtt311", host=host, port=port,
        hosts=tuple(others), credentials=lambda gw: (gw, passwords[gw]), client_prefix="demo",
    ))  # fmt: skip
    local_broker_dir = var / "mosquitto-local"
    processes: list[subprocess.Popen[bytes]] = []  # ingest workers first, then agents
    fleet_thread: threading.Thread | None = None
    with ExitStack() as stack:
        stack.callback(_say, "stopped")
        try:
            mqtt_hosts = ", ".join(cluster.mqtt_hosts)
            _say(f"starting a 3-node NATS JetStream cluster (MQTT on {mqtt_hosts})")
            # The services' passwords are new on every run: a users file an earlier run's
            # syncs rendered would lock them out (the gateways come back from the bucket).
            for node in cluster.nodes:
                node.users_path.unlink(missing_ok=True)
            stack.callback(cluster.stop)
            cluster.start()
            sync_secret = _secret(var / "users-sync.nats.password", sync_user.password)
            for node in cluster.nodes:
                _say(f"starting smartcity nats users-sync for {node.server_name}")
                argv = node.users_sync_argv(username=sync_user.name, password_file=sync_secret)
                sync = _spawn(argv[1:], var / f"users-sync-{node.index}.log")
                stack.callback(_terminate, sync)
            for replica, store in stores.items():
                _say(f"starting influxd {replica} on {store.url} (data in {store.data_dir})")
                stack.callback(store.stop)
                store.start()
                store.create_database(DATABASE)
            secret = _secret(var / "ingest.nats.password", ingest_user.password)
            for replica, store in stores.items():
                name = f"ingest-{replica}0"
                _say(
                    f"starting ingest worker {name} (durable consumer ingest-{replica} -> "
                    f"influxd {replica})"
                )
                config = var / f"{name}.yaml"
                config.write_text(_worker_config(cluster, replica, store, secret))
                proc = _spawn(["-m", "ingest", "run", "--config", str(config)], var / f"{name}.log")
                processes.append(proc)
                # $MQTT_msgs keeps a message only for the consumers it has when it arrives.
                _wait_for_log(var / f"{name}.log", '"ingest worker started"', proc, 60)
            workers = len(processes)

            gtfs: Path | None = var / "gtfs.zip"
            try:
                export_gtfs(city, var / "gtfs.zip", days=30)
            except ScenarioError:
                gtfs = None
            areas = var / "areas.json"
            export_areas(city, areas)
            _say("starting the API (demo mode; reads replica a or b, whichever has caught up)")
            api = ApiServer(ApiSettings(
                demo=True, port=api_port or free_port(), topic_root=TOPIC_ROOT,
                mqtt=MqttSettings(
                    host=host, port=port, hosts=tuple(f"{h}:{p}" for h, p in others),
                    protocol="mqtt311", username=api_user.name,
                    password=api_user.password, client_id="api-demo",  # type: ignore[arg-type]
                ),
                influx_database=DATABASE,
                influx_replicas=[
                    InfluxReplica(name=r, url=s.url, durable=f"ingest-{r}")
                    for r, s in stores.items()
                ],
                replica_lag={"servers": cluster.urls, "username": api_user.name,  # type: ignore[arg-type]
                             "password": api_user.password},
                enrolment={"nats": {"servers": cluster.urls, "username": api_user.name,  # type: ignore[arg-type]
                                    "password": api_user.password}},
                database_url=f"sqlite:///{var / 'api.sqlite3'}",
                city_timezone=city.city.timezone, gtfs_static_path=gtfs, areas_path=areas,
            ))  # fmt: skip
            api.start()
            stack.callback(api.stop)
            keys = api.services.demo_keys
            viewer = keys.get("viewer", "?")

            local_broker = Mosquitto(data_dir=local_broker_dir)
            _say(f"starting the gateways' local broker on {local_broker.url}")
            stack.callback(local_broker.stop)
            local_broker.start()
            devices = stack.enter_context(
                DeviceCity(city, directory=var / "devices", mqtt_url=local_broker.url)
            )
            configs = edge_configs(
                devices.endpoints,
                broker=(host, port),
                topic_root=TOPIC_ROOT,
                state=var / "edge" / "state",
            )
            for gateway, cfg in configs.items():
                _say(f"enrolling edge gateway {gateway} (claim token, smartcity edge enroll)")
                cfg["broker"].update(_enrol(
                    api.url, keys["engineer"], gateway, var / "edge" / "enrolled" / gateway
                ))  # fmt: skip
            for gateway, path in write_configs(configs, var / "edge").items():
                _say(f"starting edge agent {gateway} (mqtt311, {path.name})")
                processes.append(_spawn(
                    ["-m", "edge_agent", "run", "--config", str(path), "--log-format", "json"],
                    var / "edge" / f"{gateway}.log",
                ))  # fmt: skip
            _say(
                f"starting the simulated fleet: scenario '{scenario}' "
                f"({len(fleet.gateway_ids)} gateways, MQTT 3.1.1)"
            )
            fleet_thread = threading.Thread(target=fleet.run, name="demo.fleet", daemon=True)
            fleet_thread.start()
            print(
                "\n"
                f"  dashboard  {api.url}/dashboard/#key={viewer}\n"
                f"  health     curl -H 'X-API-Key: {viewer}' {api.url}/v1/health\n"
                "  demo keys  "
                + "  ".join(f"{role}={key}" for role, key in sorted(keys.items())) + "\n"
                f"  NATS       {', '.join(cluster.urls)}  (MQTT {', '.join(cluster.mqtt_hosts)})\n"
                + "".join(f"  influxd {r}  {s.url}   database '{DATABASE}'\n"
                          for r, s in stores.items())
                + f"  logs       {var}/*.log\n  stop       Ctrl-C\n",
                flush=True,
            )  # fmt: skip
            started = time.monotonic()
            while duration <= 0 or time.monotonic() - started < duration:
                time.sleep(2.0)
                for proc in processes[:workers]:
                    if proc.poll() is not None:
                        _say(f"an ingest worker exited with {proc.returncode}; see {var}")
                        return 1
                rates = []
                for r, s in stores.items():
                    try:
                        rates.append(f"{r} {_stored_points(s, seconds=10) / 10:6.0f}/s")
                    except (ServiceError, OSError):
                        rates.append(f"{r} down")
                online = _api_total(f"{api.url}/v1/gateways?state=online&limit=1", viewer)
                print(
                    f"[demo] stored {' | '.join(rates)} | {fleet.ledger.readings:9d} sent | "
                    f"{'?' if online is None else online} gateways online | "
                    f"{_replica_line(_health(api.url, viewer))} | "
                    f"up {time.monotonic() - started:4.0f}s",
                    end=line_end, flush=True,
                )  # fmt: skip
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
            fleet.stop()
            if fleet_thread is not None:
                fleet_thread.join(timeout=30)
            workers_running = [p for p in processes[: len(stores)] if p.poll() is None]
            for proc in processes[len(stores) :]:
                _terminate(proc)
            if fleet_thread is not None and workers_running:
                _drain_and_report(stores, fleet.ledger.readings)
            for proc in processes[: len(stores)]:
                _terminate(proc)
