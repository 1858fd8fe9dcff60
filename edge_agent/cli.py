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


def _load_checked(config: Path) -> tuple[AgentConfig, list[str]]:
    """Load, validate and pre-flight ``config``; exit 78 with every problem on stderr.

    Returns the config and the notes (problems that do not stop the agent)."""
    from edge_agent._errors import ConfigError
    from edge_agent._preflight import load_checked

    try:
        return load_checked(config)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=EXIT_CONFIG) from None


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

    Exit 78 (EX_CONFIG) on a config problem (the same checks as ``check``), 1 on a failure.
    After a ``restart`` command: exit 75 under systemd (the unit restarts it), else run again
    in this process (re-executed). The agent runs in this process (same pid) without the
    command line framework: edge_agent/_daemon.py."""
    import os
    import sys

    if log_format not in (None, "json", "console"):
        raise typer.BadParameter("must be json or console", param_hint="--log-format")
    daemon = [sys.executable, "-P", "-m", "edge_agent._daemon", "--config", str(config)]
    daemon += ["--log-level", log_level, *(["--log-format", log_format] if log_format else [])]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, daemon)  # noqa: S606 - our interpreter, our module


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


@app.command("update")
def update(
    source: Annotated[
        str | None,
        typer.Argument(help="A wheel or a locked requirements file (path or http(s) URL)."),
    ] = None,
    sha256: Annotated[
        str | None, typer.Option(help="Expected SHA-256 (required for URLs).")
    ] = None,
    deadline: Annotated[
        float, typer.Option(help="Seconds for the new agent to connect and send its birth.")
    ] = 120.0,
    config: ConfigOption = Path("/etc/smartcity-edge/edge.yaml"),
    root: Annotated[Path, typer.Option(help="Install root (releases/, current, previous).")] = (
        Path("/opt/smartcity-edge")
    ),
    requirements: Annotated[
        Path | None,
        typer.Option(help="Lock for a wheel's dependencies (default: the running release's)."),
    ] = None,
    installer: Annotated[str, typer.Option(help="pip, or a uv executable.")] = "pip",
    unit: Annotated[str, typer.Option(help="systemd unit to restart.")] = "smartcity-edge.service",
    pid_file: Annotated[
        Path | None,
        typer.Option(help="Without systemd: restart the agent whose pid is in this file."),
    ] = None,
    request: Annotated[
        Path | None, typer.Option(help="Carry out the agent's update-request.json instead.")
    ] = None,
    allow_url_prefix: Annotated[
        list[str] | None, typer.Option(help="URL prefixes a --request may name (repeat).")
    ] = None,
    allow_downgrade: Annotated[
        bool,
        typer.Option(help="Install a release older than the running one (a deliberate rollback)."),
    ] = False,
    reinstall: Annotated[
        bool, typer.Option(help="Install the running version again (a repair).")
    ] = False,
    accept_rollback_requests: Annotated[
        bool,
        typer.Option(help="Let a --request ask for allow_downgrade or reinstall (root's choice)."),
    ] = False,
) -> None:
    """Install a new release next to the running one, switch to it, restart the agent and
    roll back on its own if it does not reconnect within --deadline (docs/gateway-install.md).
    Exit 0 updated, 1 not updated, 2 rolled back, 3 rollback failed."""
    from edge_agent._status import fetch_status
    from edge_agent._update import update_command

    code = update_command(
        source=source, sha256=sha256, deadline_s=deadline, config=config, root=root,
        requirements=requirements, installer=installer, unit=unit, pid_file=pid_file,
        request=request, allow_url_prefix=allow_url_prefix or [],
        say=lambda line: typer.echo(line, err=True),
        fetch_status=fetch_status, allow_downgrade=allow_downgrade, reinstall=reinstall,
        accept_rollback_requests=accept_rollback_requests,
    )
    raise typer.Exit(code=code)


release_app = typer.Typer(
    name="release",
    help="Signed releases: a signing key, and the .sig that `edge update` checks against "
    'update.trusted_keys (docs/gateway-install.md, "Signed releases").',
    no_args_is_help=True,
)
app.add_typer(release_app)


@release_app.command("keygen")
def release_keygen(
    key: Annotated[Path, typer.Argument(help="Where to write the private key (mode 600).")],
) -> None:
    """Make an Ed25519 signing key: KEY (private, mode 600; keep it off the gateways) and
    KEY.pub (the public key, for update.trusted_keys). Never overwrites a file."""
    from edge_agent._releases import UpdateError
    from edge_agent._signing import generate_key

    try:
        public = generate_key(key)
    except (UpdateError, OSError) as exc:
        typer.echo(f"release keygen: {exc}", err=True)
        raise typer.Exit(code=1) from None
    typer.echo(f"private key {key} (mode 600)\npublic key  {key}.pub: {public}")


@release_app.command("sign")
def release_sign(
    release: Annotated[Path, typer.Argument(help="The wheel or locked requirements file.")],
    key: Annotated[Path, typer.Option(help="The private key from `edge release keygen`.")],
) -> None:
    """Sign RELEASE: writes RELEASE.sig beside it (publish it next to the release)."""
    from edge_agent._releases import UpdateError
    from edge_agent._signing import sign_release

    try:
        out = sign_release(release, key)
    except (UpdateError, OSError) as exc:
        typer.echo(f"release sign: {exc}", err=True)
        raise typer.Exit(code=1) from None
    typer.echo(str(out))


@app.command("enroll")
def enroll(
    api: Annotated[str, typer.Option(help="The platform API's base URL (https://...).")],
    token: Annotated[
        str,
        typer.Option(help="The one-time claim token an engineer got for this gateway.",
                     envvar="SMARTCITY_CLAIM_TOKEN"),
    ],
    out: Annotated[
        Path, typer.Option(help="Where to write the credentials and the broker block.")
    ] = Path("/etc/smartcity-edge"),
    ca_file: Annotated[
        Path | None, typer.Option(help="CA bundle to trust at the API (default: system).")
    ] = None,
    allow_insecure: Annotated[
        bool, typer.Option(help="Permit plain http to an API not on loopback (test benches).")
    ] = False,
) -> None:
    """Redeem a claim token for this gateway's own broker credentials (docs/security.md,
    "Enrolment"): writes broker-password (0600), broker-ca.pem and broker.yaml into --out.
    A token works once; exit 1 when it is refused."""
    from edge_agent._enroll import EnrollError
    from edge_agent._enroll import enroll as redeem

    try:
        done = redeem(api, token, out, ca_file=ca_file, allow_insecure=allow_insecure)
    except EnrollError as exc:
        typer.echo(f"enroll: {exc}", err=True)
        raise typer.Exit(code=1) from None
    typer.echo(f"enrolled gateway {done.gateway} (client id {done.client_id}, {done.broker})")
    typer.echo(f"  password  {done.password_file} (mode 600)")
    if done.ca_file is not None:
        typer.echo(f"  broker CA {done.ca_file}")
    typer.echo(f"  broker:   {done.broker_yaml}")
    typer.echo("next: copy the broker: block of broker.yaml into edge.yaml (gateway.id "
               f"{done.gateway}), then `smartcity edge check --config edge.yaml` and start "
               "the agent (`systemctl restart smartcity-edge` or `smartcity edge run`).")
