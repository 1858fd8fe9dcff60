"""The ``smartcity`` command: one entry point, a subcommand per service.

::

    smartcity edge    ...   gateway daemon            (edge_agent/cli.py)
    smartcity ingest  ...   MQTT -> InfluxDB workers   (ingest/cli.py)
    smartcity api     ...   HTTP API and dashboard     (api/cli.py)
    smartcity sim     ...   simulated city and fleets  (simulators/cli.py)
    smartcity sim chaos     the whole stack failing    (smartcity/_chaos.py)
    smartcity demo          everything on one machine  (smartcity/_demo.py)
"""

from __future__ import annotations

import importlib
import json
import signal
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from typer.core import DEFAULT_MARKUP_MODE, TyperCommand, TyperGroup

# Subcommand -> (module with a typer ``app``, the optional extra it needs).
_SERVICES = {
    "edge": ("edge_agent.cli", "gateway"),
    "ingest": ("ingest.cli", "server"),
    "api": ("api.cli", "server"),
    "sim": ("simulators.cli", "sim"),
    "nats": ("smartcity._nats_users", "server"),
}
_OWN_PACKAGES = frozenset(
    {"telemetry", "foundation", "smartcity", "edge_agent", "ingest", "api", "simulators",
     "firmware_bridge"}
)


def _as_command(sub: typer.Typer, name: str) -> TyperCommand | TyperGroup:
    command = typer.main.get_command(sub)
    if not isinstance(command, TyperCommand | TyperGroup):  # typer builds only these
        raise TypeError(f"unexpected command type {type(command).__name__}")
    command.name = name
    return command


def _missing_extra(name: str, extra: str, missing: str) -> TyperCommand | TyperGroup:
    """Stands in for a service whose optional dependencies are not installed."""
    stub = typer.Typer(add_completion=False)
    # Rich markup (typer's default when rich is installed) would take "[server]" for a style
    # tag and print "pip install 'smartcity-telemetry'": escape the bracket.
    bracket = "\\[" if DEFAULT_MARKUP_MODE == "rich" else "["

    @stub.command(
        name,
        help=f"(not installed: pip install 'smartcity-telemetry{bracket}{extra}]')",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def explain() -> None:
        typer.echo(
            f"smartcity {name} needs the '{extra}' extra ({missing} is missing): "
            f"pip install 'smartcity-telemetry[{extra}]'",
            err=True,
        )
        raise typer.Exit(code=3)

    return _as_command(stub, name)


class _LazyServices(TyperGroup):
    """Imports a service's command line only when that subcommand is used.

    ``smartcity edge run`` on a gateway therefore loads the edge agent and nothing else:
    no web framework, no database client, and no failure because another service's
    package cannot be imported.
    """

    # ``ctx`` is typer's vendored click Context, which typer exposes under no public name.
    def list_commands(self, ctx: Any) -> list[str]:
        return [*_SERVICES, *super().list_commands(ctx)]

    def get_command(self, ctx: Any, cmd_name: str) -> TyperCommand | TyperGroup | None:
        if cmd_name not in _SERVICES:
            found = super().get_command(ctx, cmd_name)
            return found if isinstance(found, TyperCommand | TyperGroup) else None
        module, extra = _SERVICES[cmd_name]
        try:
            sub: typer.Typer = importlib.import_module(module).app
        except ModuleNotFoundError as exc:
            # Only a missing third-party package means "extra not installed"; a missing
            # module of our own is a bug and must surface.
            if exc.name is None or exc.name.split(".")[0] in _OWN_PACKAGES:
                raise
            return _missing_extra(cmd_name, extra, exc.name)
        # The chaos run drives the whole stack (local services, ingest workers, a fleet), so
        # it lives here, in the top layer, and joins the simulators' commands.
        if cmd_name == "sim" and not any(c.name == "chaos" for c in sub.registered_commands):
            sub.command("chaos")(chaos)
        return _as_command(sub, cmd_name)


app = typer.Typer(
    name="smartcity",
    help="Smart-city telemetry platform: edge agents, ingest, API and simulators.",
    cls=_LazyServices,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        try:
            typer.echo(version("smartcity-telemetry"))
        except PackageNotFoundError:
            typer.echo("unknown")
        raise typer.Exit()


@app.callback()
def _root(
    _version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Smart-city telemetry platform."""


@app.command()
def demo(
    var_dir: Annotated[str, typer.Option(help="Where services keep their data.")] = "var",
    duration: Annotated[
        float, typer.Option(help="Stop after this many seconds (0: run until Ctrl-C).")
    ] = 0.0,
    scenario: Annotated[
        str, typer.Option(help="Simulated city: a packaged scenario name or a YAML file.")
    ] = "city",
    api_port: Annotated[int, typer.Option(help="API port (0: a free one).")] = 0,
    cluster: Annotated[
        bool,
        typer.Option(help="Cluster profile: 3 NATS nodes, 2 ingest workers, 2 InfluxDB "
                     "replicas (docs/cluster.md)."),
    ] = False,
) -> None:
    """Run the platform on this machine: broker, database, services and a simulated city."""
    try:
        from smartcity._demo import run_demo
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] in _OWN_PACKAGES:
            raise  # a module of our own missing is a bug, not a missing extra
        typer.echo(
            f"smartcity demo runs the whole platform and needs the 'gateway', 'server' and "
            f"'sim' extras ({exc.name} is missing): "
            f"pip install 'smartcity-telemetry[gateway,server,sim]'",
            err=True,
        )
        raise typer.Exit(code=1) from None

    if cluster:
        from smartcity._demo_cluster import run_cluster_demo

        raise typer.Exit(code=run_cluster_demo(
            var_dir=var_dir, duration=duration, scenario=scenario, api_port=api_port
        ))
    raise typer.Exit(
        code=run_demo(var_dir=var_dir, duration=duration, scenario=scenario, api_port=api_port)
    )


def chaos(
    gateways: Annotated[int, typer.Option(help="Gateways in the fleet.")] = 200,
    minutes: Annotated[float, typer.Option(help="Length of the chaos phase.")] = 5.0,
    seed: Annotated[int, typer.Option(help="Seed of the schedule and the city.")] = 1,
    scenario: Annotated[
        str, typer.Option(help="Scenario whose gateway mix is scaled to --gateways.")
    ] = "load-1000",
    speed: Annotated[
        float, typer.Option(help="Simulated seconds per wall second (the offered load).")
    ] = 20.0,
    reference: Annotated[
        float, typer.Option(help="Seconds of the fault-free reference phase.")
    ] = 30.0,
    directory: Annotated[
        Path | None,
        typer.Option("--dir", help="Keep data and logs here (default: a temporary directory)."),
    ] = None,
    hostile: Annotated[
        int,
        typer.Option(
            min=0, help="Hostile gateways beside the honest ones (their messages are tallied "
            "apart; only the honest ledger is compared).",
        ),
    ] = 0,
    cluster: Annotated[
        bool,
        typer.Option(
            "--cluster", help="The cluster profile (docs/cluster.md): 3 NATS JetStream nodes "
            "(MQTT 3.1.1) and --replicas InfluxDB replicas, each fed by its own two ingest "
            "workers and durable consumer; events: SIGKILL of a node (stream and meta "
            "leaders included), full-cluster restart, SIGKILL of a replica, worker kills, "
            "gateway faults. Every replica is checked against the ledger.",
        ),
    ] = False,
    replicas: Annotated[
        int, typer.Option(min=1, help="InfluxDB replicas with --cluster.")
    ] = 2,
    edge_agents: Annotated[
        int,
        typer.Option(
            min=0, help="Real edge agents (python -m edge_agent run, simulated inputs) beside "
            "the fleet, SIGKILLed now and then (agent_kill); their spools are their ledger.",
        ),
    ] = 0,
) -> None:
    """Run a fleet against local mosquitto, influxd, two ingest workers and the API (gap
    repair) while all of them fail (seeded), then compare the honest ledger with InfluxDB;
    the last line is a JSON report. Exit 1 when an honest reading was lost or doubled.
    With --cluster: the same on a NATS JetStream cluster and InfluxDB replicas."""
    from simulators import SimulatorError
    from smartcity._chaos import ChaosConfig, run_chaos
    from smartcity._localstack import ServiceError

    duration = minutes * 60
    try:
        config = ChaosConfig(
            gateways=gateways, scenario=scenario, speed=speed, seed=seed,
            reference_s=reference, duration_s=duration, quiet_s=max(30.0, 0.15 * duration),
            data_dir=directory, hostile=hostile, cluster=cluster, replicas=replicas,
            edge_agents=edge_agents,
        )  # fmt: skip
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # unwinds through run_chaos: every process is stopped

    signal.signal(signal.SIGTERM, interrupt)
    try:
        report = run_chaos(config, say=typer.echo)
    except (SimulatorError, ServiceError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    typer.echo(json.dumps(report.to_dict()))
    if not report.ok:
        raise typer.Exit(code=1)


def main() -> None:
    app()
