"""The ``smartcity`` command: one entry point, a subcommand per service.

::

    smartcity edge    ...   gateway daemon            (edge_agent/cli.py)
    smartcity ingest  ...   MQTT -> InfluxDB workers   (ingest/cli.py)
    smartcity api     ...   HTTP API and dashboard     (api/cli.py)
    smartcity sim     ...   simulated city and fleets  (simulators/cli.py)
    smartcity demo          everything on one machine  (smartcity/_demo.py)
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

# Subcommand -> (module with a typer ``app``, the optional extra it needs).
_SERVICES = {
    "edge": ("edge_agent.cli", "gateway"),
    "ingest": ("ingest.cli", "server"),
    "api": ("api.cli", "server"),
    "sim": ("simulators.cli", "sim"),
}
_OWN_PACKAGES = frozenset(
    {"telemetry", "smartcity", "edge_agent", "ingest", "api", "simulators", "firmware_bridge"}
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

    @stub.command(
        name,
        help=f"(not installed: pip install 'smartcity-telemetry[{extra}]')",
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
) -> None:
    """Run the platform on this machine: broker, database, services and a simulated city."""
    from smartcity._demo import run_demo

    raise typer.Exit(
        code=run_demo(var_dir=var_dir, duration=duration, scenario=scenario, api_port=api_port)
    )


def main() -> None:
    app()
