"""`smartcity sim`: Simulated city: devices for edge agents, or whole gateway fleets onto a broker.

Only typer and the stdlib are imported at module level, so `smartcity --help` stays fast
and a gateway install does not need server packages to show it.

::

    smartcity sim scenarios                              packaged scenarios
    smartcity sim check --scenario city                  validate and summarise a scenario
    smartcity sim run --scenario city --broker mqtts://broker:8883 --ca-file ca.pem
    smartcity sim devices --scenario small --dir /tmp/sim   ptys, Modbus TCP, local MQTT
    smartcity sim gtfs --scenario city --out gtfs.zip     the buses' timetable (GTFS zip)
    smartcity sim areas --scenario city --out areas.json  the city's areas (GeoJSON polygons)
    smartcity sim chaos --gateways 200 --minutes 5          (added by smartcity: the whole stack)
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer

app = typer.Typer(
    name="sim",
    help="Simulated city: devices for edge agents, or whole gateway fleets onto a broker.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

ScenarioOption = Annotated[
    str,
    typer.Option(
        "--scenario",
        "-s",
        help="Scenario YAML file, or the name of a packaged one (see `smartcity sim scenarios`).",
    ),
]


def _load(scenario: str, **overrides: Any) -> Any:
    from simulators._errors import ScenarioError
    from simulators._scenario import load_scenario

    try:
        return load_scenario(scenario, **{k: v for k, v in overrides.items() if v is not None})
    except ScenarioError as exc:
        typer.echo(f"error: invalid scenario: {exc}", err=True)
        raise typer.Exit(code=2) from exc


def _on_signals(stop: Any) -> None:
    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


@app.command("scenarios")
def scenarios() -> None:
    """List the packaged scenarios with their size."""
    from simulators._scenario import load_scenario, packaged_scenarios

    for name in packaged_scenarios():
        s = load_scenario(name)
        typer.echo(
            f"{name:12s} {s.gateway_count:6d} gateways {s.device_count():7d} devices  "
            f"tick {s.tick_s:g}s speed {s.speed:g}  {s.description.strip()[:60]}"
        )


@app.command("check")
def check(scenario: ScenarioOption) -> None:
    """Validate a scenario and print what it builds (exit 2 if invalid)."""
    sc = _load(scenario)
    from simulators._scenario import DEVICE_KINDS

    summary = {
        "name": sc.name,
        "seed": sc.seed,
        "gateways": sc.gateway_count,
        "devices": {k: sc.device_count(k) for k in DEVICE_KINDS if sc.device_count(k)},
        "tick_s": sc.tick_s,
        "speed": sc.speed,
        "faults": [f.type for f in sc.faults],
    }
    typer.echo(json.dumps(summary, indent=2))


@app.command("run")
def run(
    scenario: ScenarioOption,
    broker: Annotated[
        str, typer.Option(help="mqtt://host:port, or mqtts://host:port for TLS.")
    ] = "mqtt://127.0.0.1:1883",
    username: Annotated[str | None, typer.Option(help="Broker user name.")] = None,
    password: Annotated[
        str | None, typer.Option(help="Broker password.", envvar="SMARTCITY_SIM_PASSWORD")
    ] = None,
    password_file: Annotated[
        Path | None, typer.Option(dir_okay=False, help="File holding the broker password.")
    ] = None,
    ca_file: Annotated[Path | None, typer.Option(help="CA bundle (PEM) for TLS.")] = None,
    cert: Annotated[Path | None, typer.Option(help="Client certificate (PEM) for TLS.")] = None,
    key: Annotated[Path | None, typer.Option(help="Client key (PEM) for TLS.")] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            help="Skip the broker's hostname check (test brokers only; needs --allow-insecure)."
        ),
    ] = False,
    allow_insecure: Annotated[
        bool,
        typer.Option(
            help="Development only: permit --insecure and a password without TLS to a "
            "broker that is not on loopback."
        ),
    ] = False,
    speed: Annotated[
        float | None,
        typer.Option(help="Simulated seconds per wall second (0: as fast as the broker takes)."),
    ] = None,
    duration: Annotated[
        float | None, typer.Option(help="Stop after this many wall seconds.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Override the scenario's seed.")] = None,
    topic_root: Annotated[str | None, typer.Option(help="Override the topic root.")] = None,
    client_prefix: Annotated[str, typer.Option(help="MQTT client id prefix.")] = "sim",
    ledger: Annotated[
        Path | None, typer.Option(help="Write the ledger (JSON) here at the end.")
    ] = None,
    retry_unrouted: Annotated[
        bool,
        typer.Option(
            help="Keep and resend batches the broker acknowledges with 0x10 (no subscriber), "
            "as gateways do. --no-retry-unrouted: count them as delivered (load tests "
            "against a broker nobody subscribes to).",
        ),
    ] = True,
) -> None:
    """Run a scenario's gateways against a broker until Ctrl-C or --duration."""
    sc = _load(scenario, seed=seed)
    from simulators._errors import BrokerError, ScenarioError
    from simulators.fleet import BrokerUrl, FleetConfig, FleetStats, GatewayFleet

    try:
        url = BrokerUrl.parse(broker)
        tls = _tls(url.tls, ca_file=ca_file, cert=cert, key=key, insecure=insecure)
    except BrokerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    try:
        fleet = GatewayFleet(
            FleetConfig(
                scenario=sc,
                host=url.host,
                port=url.port,
                username=username,
                password=password,
                password_file=password_file,
                tls=tls,
                allow_insecure=allow_insecure,
                speed=speed,
                topic_root=topic_root,
                client_prefix=client_prefix,
                retry_unrouted=retry_unrouted,
            )
        )
    except ScenarioError as exc:
        typer.echo(f"error: invalid scenario: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    except BrokerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    _on_signals(fleet.stop)
    typer.echo(
        f"sim: {sc.name}: {fleet.layout.gateways} gateways, "
        f"{sum(k.sensors for k in fleet.layout.kinds.values())} devices -> {broker} "
        f"(root {fleet.scenario.topic_root}, speed {fleet.scenario.speed:g})"
    )
    started = time.monotonic()

    def show(stats: FleetStats) -> None:
        up = time.monotonic() - started
        led = fleet.ledger
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(stats.sim_ns / 1e9))
        typer.echo(
            f"sim: up {up:6.0f}s  sim {when}Z"
            f"  online {stats.online}/{fleet.layout.gateways}  acked {led.readings} readings"
            f"  ({led.readings / max(up, 1e-9):.0f}/s)  spooled {fleet.spooled_batches()} batches"
            f"  lag {stats.lag_s:.1f}s"
        )

    try:
        stats = fleet.run(duration, progress=show)
    except BrokerError as exc:
        typer.echo(f"error: broker: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    show(stats)
    typer.echo(json.dumps({"totals": fleet.ledger.totals(), "ticks": stats.ticks}))
    if ledger is not None:
        ledger.write_text(fleet.ledger.to_json())


def _tls(
    scheme_tls: bool, *, ca_file: Path | None, cert: Path | None, key: Path | None,
    insecure: bool,
) -> Any:
    """The ``BrokerTls`` of ``sim run``'s flags, or ``None`` when TLS is not asked for."""
    from foundation import BrokerTls
    from simulators._errors import BrokerError

    if not (scheme_tls or ca_file or cert or key or insecure):
        return None
    if (cert is None) != (key is None):
        raise BrokerError("--cert and --key go together (client certificate)")
    return BrokerTls(ca_file=ca_file, cert_file=cert, key_file=key, insecure=insecure)


@app.command("devices")
def devices(
    scenario: ScenarioOption,
    directory: Annotated[
        Path, typer.Option("--dir", help="Where the pty links are created.")
    ] = Path("sim-devices"),
    mqtt_broker: Annotated[
        str | None,
        typer.Option(help="Local broker for the MQTT sensors (mqtt://host:port); none: skip."),
    ] = None,
    speed: Annotated[float | None, typer.Option(help="Simulated seconds per wall second.")] = None,
    duration: Annotated[
        float | None, typer.Option(help="Stop after this many wall seconds.")
    ] = None,
    modbus_port: Annotated[
        int,
        typer.Option(
            min=0, max=65535,
            help="Modbus TCP port of the first meter (the next ones: +1, +2...); 0: free ports.",
        ),
    ] = 0,
) -> None:
    """Serve the city as devices for real edge agents; print where they are (pty links, the
    firmware board ids an agent's ``device_names`` maps, Modbus TCP ports, MQTT topics)."""
    sc = _load(scenario, speed=speed)
    from simulators._devicemode import DeviceCity
    from simulators._errors import SimulatorError

    stopping = False

    def stop() -> None:
        nonlocal stopping
        stopping = True

    _on_signals(stop)
    try:
        with DeviceCity(
            sc, directory=directory, mqtt_url=mqtt_broker, modbus_port=modbus_port
        ) as city:
            typer.echo(json.dumps(city.endpoints.as_dict(), indent=2))
            sys.stdout.flush()
            deadline = None if duration is None else time.monotonic() + duration
            while not stopping and (deadline is None or time.monotonic() < deadline):
                time.sleep(0.2)
    except SimulatorError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc


@app.command("areas")
def areas(
    scenario: ScenarioOption,
    out: Annotated[Path, typer.Option("--out", "-o", dir_okay=False,
                                      help="Where to write the GeoJSON.")] = Path("areas.json"),
) -> None:
    """Export the simulated city's areas (centre, inner, outer) as GeoJSON polygons. Point the
    API's ``areas_path`` at it: a bus is then placed in the area it is driving through."""
    sc = _load(scenario)
    from simulators._areas import export_areas

    try:
        count = export_areas(sc, out)
    except OSError as exc:
        typer.echo(f"error: cannot write {out}: {exc.strerror or exc}", err=True)
        raise typer.Exit(code=1) from exc
    typer.echo(json.dumps({"file": str(out), "bytes": out.stat().st_size, "areas": count}))


@app.command("gtfs")
def gtfs(
    scenario: ScenarioOption,
    out: Annotated[Path, typer.Option("--out", "-o", dir_okay=False,
                                      help="Where to write the GTFS zip.")] = Path("gtfs.zip"),
    start: Annotated[
        str | None,
        typer.Option(help="First service day (YYYY-MM-DD); default: the day before the "
                     "scenario's start."),
    ] = None,
    days: Annotated[int, typer.Option(min=1, max=3660, help="Days the feed is valid.")] = 365,
    delays: Annotated[
        Path | None,
        typer.Option(dir_okay=False, help="Also write the recorded delay of every trip of "
                     "the first --delay-days days here (CSV): the ground truth."),
    ] = None,
    delay_days: Annotated[int, typer.Option(min=1, max=366)] = 2,
) -> None:
    """Export the simulated buses' timetable as a GTFS Schedule zip (agency, stops, routes,
    trips, stop_times, calendar, feed_info): what an on-time bus does. Point the API's
    ``gtfs_static_path`` at it."""
    import datetime as dt

    sc = _load(scenario)
    from simulators._errors import ScenarioError
    from simulators._gtfs import export_gtfs

    try:
        first = dt.date.fromisoformat(start) if start is not None else None
    except ValueError as exc:
        typer.echo(f"error: --start: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    try:
        counts = export_gtfs(sc, out, start=first, days=days, delays=delays,
                             delay_days=delay_days)
    except ScenarioError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    except OSError as exc:
        typer.echo(f"error: cannot write {out}: {exc.strerror or exc}", err=True)
        raise typer.Exit(code=1) from exc
    typer.echo(json.dumps({"file": str(out), "bytes": out.stat().st_size, "rows": counts}))
