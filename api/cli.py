"""`smartcity api`: live and historical transport and resource data (REST, live push, GTFS-RT).

Only typer and the stdlib are imported at module level, so `smartcity --help` stays fast
and a gateway install does not need server packages to show it.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="api",
    help="API: live and historical transport and resource data (REST, WebSocket/SSE, GTFS-RT).",
    no_args_is_help=True,
)


@app.command("status")
def status() -> None:
    """Say what this subcommand can do in this build."""
    typer.echo("api: not yet available in this build (see the project's issue tracker)")
    raise typer.Exit(code=2)
