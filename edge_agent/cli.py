"""`smartcity edge`: the gateway daemon (inputs, filters, spool, MQTT uplink).

Only typer and the stdlib are imported at module level, so `smartcity --help` stays fast
and a gateway install does not need server packages to show it. The agent is imported
inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="edge",
    help="Edge agent: the gateway daemon (inputs, filters, spool, MQTT uplink).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

ConfigOption = Annotated[
    Path,
    typer.Option("--config", "-c", help="Agent config (YAML); see docs/gateway-install.md."),
]

#: Exit code for a config that does not validate (EX_CONFIG from sysexits.h).
EXIT_CONFIG = 78
def _limit_malloc_arenas() -> None:
    """Gateways are small: cap glibc malloc arenas (executor threads each get one
    otherwise, each keeping freed memory resident). No effect on other C libraries."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_arena_max = -8
    mallopt(m_arena_max, 2)


@app.command("check")
def check(config: ConfigOption) -> None:
    """Validate a config file without running the agent; exit 78 if it is invalid."""
    from edge_agent._config import load_config
    from edge_agent._errors import ConfigError

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=EXIT_CONFIG) from None
    rules = len(cfg.processors)
    typer.echo(
        f"{config}: ok (gateway {cfg.gateway.id}, {len(cfg.inputs)} input(s), "
        f"{rules} processor rule(s), {len(cfg.devices)} device(s), "
        f"broker {cfg.broker.host}:{cfg.broker.port})"
    )


@app.command("run")
def run(
    config: ConfigOption,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING, ERROR.")] = "INFO",
    log_format: Annotated[
        str | None, typer.Option(help="json or console (default: console on a terminal).")
    ] = None,
) -> None:
    """Run the agent until SIGTERM/SIGINT; pending readings are flushed to the spool."""
    import asyncio

    from edge_agent._agent import run_agent
    from edge_agent._config import load_config
    from edge_agent._errors import ConfigError, EdgeError
    from foundation import configure_logging

    _limit_malloc_arenas()
    if log_format not in (None, "json", "console"):
        raise typer.BadParameter("must be json or console", param_hint="--log-format")
    configure_logging(log_level, log_format)  # type: ignore[arg-type]
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=EXIT_CONFIG) from None
    try:
        asyncio.run(run_agent(cfg))
    except EdgeError as exc:
        typer.echo(f"edge agent failed: {exc}", err=True)
        raise typer.Exit(code=1) from None
