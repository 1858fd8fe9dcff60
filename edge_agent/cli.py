"""`smartcity edge`: the gateway daemon (inputs, filters, spool, MQTT uplink).

Only typer and the stdlib are imported at module level, so `smartcity --help` stays fast
and a gateway install does not need server packages to show it. The agent is imported
inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from edge_agent._config import AgentConfig

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


def _load_checked(config: Path) -> tuple[AgentConfig, list[str]]:
    """Load, validate and pre-flight ``config``; exit 78 with every problem on stderr.

    Returns the config and the notes (problems that do not stop the agent)."""
    from edge_agent._config import load_config
    from edge_agent._errors import ConfigError
    from edge_agent._preflight import preflight

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=EXIT_CONFIG) from None
    found = preflight(cfg)
    if found.issues:
        lines = "\n".join(f"  {config}: {issue}" for issue in found.issues)
        typer.echo(
            f"config {config} names files or directories that are not usable "
            f"({len(found.issues)} problem(s)):\n{lines}",
            err=True,
        )
        raise typer.Exit(code=EXIT_CONFIG)
    return cfg, [f"{config}: note: {n}" for n in found.notes]


@app.command("check")
def check(config: ConfigOption) -> None:
    """Validate a config and every file it names (TLS, password files, register maps, the
    state dir), without running the agent; exit 78 on any problem."""
    cfg, notes = _load_checked(config)
    for note in notes:
        typer.echo(note, err=True)
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
    """Run the agent until SIGTERM/SIGINT; pending readings are flushed to the spool.

    Exit 78 (EX_CONFIG) on a config problem (the same checks as ``check``), 1 on a failure."""
    import asyncio

    from edge_agent._agent import run_agent
    from edge_agent._errors import EdgeError, UplinkError
    from foundation import configure_logging

    _limit_malloc_arenas()
    if log_format not in (None, "json", "console"):
        raise typer.BadParameter("must be json or console", param_hint="--log-format")
    configure_logging(log_level, log_format)  # type: ignore[arg-type]
    cfg, _notes = _load_checked(config)
    try:
        asyncio.run(run_agent(cfg))
    except UplinkError as exc:  # TLS files or credentials that became unusable meanwhile
        typer.echo(f"edge agent: config problem: {exc}", err=True)
        raise typer.Exit(code=EXIT_CONFIG) from None
    except EdgeError as exc:
        typer.echo(f"edge agent failed: {exc}", err=True)
        raise typer.Exit(code=1) from None


@app.command("init")
def init(
    directory: Annotated[
        Path,
        typer.Option("--dir", help="Where to write edge.yaml and edge.example.yaml."),
    ] = Path("/etc/smartcity-edge"),
    unit_dir: Annotated[
        Path | None,
        typer.Option(help="Where to write smartcity-edge.service (default: --dir)."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing edge.yaml.")] = False,
) -> None:
    """Write a commented example config and the systemd unit (from files shipped in the
    package); the unit runs this installation's `smartcity` and the config in --dir."""
    import sys

    from edge_agent._templates import render_unit, template_text

    directory = directory.absolute()
    config = directory / "edge.yaml"
    example = directory / "edge.example.yaml"
    unit = (unit_dir or directory).absolute() / "smartcity-edge.service"
    smartcity = Path(sys.argv[0]).absolute() if Path(sys.argv[0]).name == "smartcity" else (
        Path(sys.executable).with_name("smartcity")
    )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        unit.parent.mkdir(parents=True, exist_ok=True)
        text = template_text("edge.yaml")
        example.write_text(text, encoding="utf-8")
        wrote = [example]
        if force or not config.exists():
            config.write_text(text, encoding="utf-8")
            wrote.append(config)
        else:
            typer.echo(f"{config} exists: kept (--force overwrites it)", err=True)
        unit.write_text(
            render_unit(smartcity=smartcity, config=config, example=example), encoding="utf-8"
        )
        wrote.append(unit)
    except OSError as exc:
        typer.echo(f"edge init: {exc.filename or ''}: {exc.strerror or exc}", err=True)
        raise typer.Exit(code=1) from None
    for path in wrote:
        typer.echo(f"wrote {path}")
    typer.echo(
        f"next: edit {config}, then `{smartcity} edge check --config {config}`; "
        f"install the unit in /etc/systemd/system/ and `systemctl enable --now smartcity-edge`"
    )


@app.command("status")
def status(
    config: ConfigOption,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the agent.")] = 5.0,
) -> None:
    """Ask the running agent (its status socket in the state dir, else its loopback port)
    for links, spool backlog, drops, the last error per input and clock offsets. Needs no
    uplink. Exit 1 if the agent does not answer."""
    import json

    from edge_agent._config import load_config
    from edge_agent._errors import ConfigError
    from edge_agent._status import StatusUnavailable, fetch_status, format_status

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=EXIT_CONFIG) from None
    try:
        doc = fetch_status(cfg, timeout=timeout)
    except StatusUnavailable as exc:
        typer.echo(f"edge status: {exc}", err=True)
        raise typer.Exit(code=1) from None
    typer.echo(json.dumps(doc, indent=2) if as_json else format_status(doc))
