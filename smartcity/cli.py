"""The ``smartcity`` command: one entry point, a subcommand per service.

::

    smartcity edge    ...   gateway daemon            (edge_agent/cli.py)
    smartcity ingest  ...   MQTT -> InfluxDB workers   (ingest/cli.py)
    smartcity api     ...   HTTP API and dashboard     (api/cli.py)
    smartcity sim     ...   simulated city and fleets  (simulators/cli.py)
    smartcity demo          everything on one machine  (smartcity/_demo.py)
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer

from api.cli import app as api_app
from edge_agent.cli import app as edge_app
from ingest.cli import app as ingest_app
from simulators.cli import app as sim_app

app = typer.Typer(
    name="smartcity",
    help="Smart-city telemetry platform: edge agents, ingest, API and simulators.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(edge_app, name="edge")
app.add_typer(ingest_app, name="ingest")
app.add_typer(api_app, name="api")
app.add_typer(sim_app, name="sim")


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
) -> None:
    """Run the platform on this machine: broker, database, services and a simulated city."""
    from smartcity._demo import run_demo

    raise typer.Exit(code=run_demo(var_dir=var_dir, duration=duration))


def main() -> None:
    app()
