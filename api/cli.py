"""`smartcity api`: live and historical transport and resource data (REST, live push, GTFS-RT).

Only typer and the stdlib are imported at module level, so `smartcity --help` stays fast
and a gateway install does not need server packages to show it.

Bootstrap: ``smartcity api create-key --role admin --name ops`` prints a key once; that key
creates the others through ``POST /v1/keys``. ``smartcity api run --demo`` creates one key per
role and prints them: for a laptop demo, never for production.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    name="api",
    help="API: live and historical transport and resource data (REST, WebSocket/SSE, GTFS-RT).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", dir_okay=False,
        help="YAML settings file. Environment variables SMARTCITY_API_<KEY> override it; "
        "flags override both.",
    ),
]
DatabaseOption = Annotated[
    str | None,
    typer.Option(help="SQLAlchemy URL of the operator database (sqlite:///..., postgresql://...)"),
]


def _settings(config: Path | None, **overrides: Any) -> Any:
    from api._errors import ConfigError
    from api._settings import load_settings

    try:
        return load_settings(config, **overrides)
    except ConfigError as exc:
        typer.echo(f"error: invalid configuration: {exc}", err=True)
        raise typer.Exit(code=2) from exc


def _tls_flags(on: bool, **files: Any) -> dict[str, Any] | None:
    """The ``mqtt.tls`` block the flags ask for (``--mqtt-tls`` alone: ``{}``, system CAs)."""
    given = {k: v for k, v in files.items() if v is not None}
    return given if given or on else None


@app.command("run")
def run(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Listen address.")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port.")] = None,
    mqtt_host: Annotated[str | None, typer.Option(help="Broker host.")] = None,
    mqtt_port: Annotated[int | None, typer.Option(help="Broker port.")] = None,
    mqtt_username: Annotated[str | None, typer.Option(help="Broker user name.")] = None,
    mqtt_password_file: Annotated[
        Path | None,
        typer.Option(
            dir_okay=False,
            help="File holding the broker password (or SMARTCITY_API_MQTT__PASSWORD).",
        ),
    ] = None,
    mqtt_tls: Annotated[
        bool, typer.Option("--mqtt-tls", help="TLS to the broker (system CA store by default).")
    ] = False,
    mqtt_tls_ca_file: Annotated[
        Path | None, typer.Option(dir_okay=False, help="CA bundle (PEM) for the broker's TLS.")
    ] = None,
    mqtt_tls_cert_file: Annotated[
        Path | None, typer.Option(dir_okay=False, help="Client certificate (PEM) for the broker.")
    ] = None,
    mqtt_tls_key_file: Annotated[
        Path | None, typer.Option(dir_okay=False, help="Client key (PEM) for the broker.")
    ] = None,
    mqtt_tls_insecure: Annotated[
        bool,
        typer.Option(
            "--mqtt-tls-insecure",
            help="Skip the broker's hostname check (needs --mqtt-allow-insecure).",
        ),
    ] = False,
    mqtt_allow_insecure: Annotated[
        bool,
        typer.Option(
            "--mqtt-allow-insecure",
            help="Development only: permit --mqtt-tls-insecure and a password without TLS.",
        ),
    ] = False,
    tls_cert_file: Annotated[
        Path | None,
        typer.Option(dir_okay=False, help="Serve HTTPS with this certificate chain (PEM)."),
    ] = None,
    tls_key_file: Annotated[
        Path | None, typer.Option(dir_okay=False, help="Private key (PEM) of --tls-cert-file.")
    ] = None,
    topic_root: Annotated[str | None, typer.Option(help="Topic namespace root.")] = None,
    influx_url: Annotated[str | None, typer.Option(help="InfluxDB base URL.")] = None,
    influx_ca_file: Annotated[
        Path | None,
        typer.Option(dir_okay=False, help="CA bundle (PEM) for an https:// InfluxDB."),
    ] = None,
    influx_cert_file: Annotated[
        Path | None, typer.Option(dir_okay=False, help="Client certificate (PEM) for InfluxDB.")
    ] = None,
    influx_key_file: Annotated[
        Path | None, typer.Option(dir_okay=False, help="Client key (PEM) for InfluxDB.")
    ] = None,
    influx_allow_insecure: Annotated[
        bool,
        typer.Option(
            "--influx-allow-insecure",
            help="Development only: permit an InfluxDB password over plain http to a remote host.",
        ),
    ] = False,
    database: Annotated[str | None, typer.Option(help="InfluxDB database.")] = None,
    database_url: DatabaseOption = None,
    cors_origin: Annotated[
        list[str] | None, typer.Option(help="Allowed browser origin (repeatable).")
    ] = None,
    demo: Annotated[
        bool, typer.Option("--demo", help="Demo mode: create and print one key per role.")
    ] = False,
    log_level: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING, ERROR.")] = None,
    log_format: Annotated[str | None, typer.Option(help="json or console.")] = None,
) -> None:
    """Serve the API until SIGTERM/SIGINT.

    Exit 2: invalid settings; exit 1: start-up failed (a certificate, key or password file
    the settings name is missing or unreadable, or the server did not start).
    """
    settings = _settings(
        config, host=host, port=port,
        mqtt={
            "host": mqtt_host, "port": mqtt_port, "username": mqtt_username,
            "password_file": mqtt_password_file, "allow_insecure": mqtt_allow_insecure or None,
            "tls": _tls_flags(
                mqtt_tls, ca_file=mqtt_tls_ca_file, cert_file=mqtt_tls_cert_file,
                key_file=mqtt_tls_key_file, insecure=mqtt_tls_insecure or None,
            ),
        },
        tls_cert_file=tls_cert_file, tls_key_file=tls_key_file,
        topic_root=topic_root, influx_url=influx_url, influx_database=database,
        influx_ca_file=influx_ca_file, influx_cert_file=influx_cert_file,
        influx_key_file=influx_key_file, influx_allow_insecure=influx_allow_insecure or None,
        database_url=database_url, cors_origins=cors_origin or None, demo=demo or None,
        log_level=log_level.upper() if log_level else None, log_format=log_format,
    )
    from api._errors import ApiError
    from api._server import serve
    from foundation import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    try:
        serve(settings)
    except ApiError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc


def _database(config: Path | None, database_url: str | None) -> Any:
    from api._errors import ConfigError
    from api.storage import Database

    settings = _settings(config, database_url=database_url)
    try:
        db = Database(settings.database_url)
        db.create_schema()
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    return db


@app.command("create-key")
def create_key(
    role: Annotated[str, typer.Option(help="viewer, operator, engineer or admin.")],
    name: Annotated[str, typer.Option(help="Who or what uses the key.")] = "bootstrap",
    config: ConfigOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Create an API key and print it (the only time it is shown; only its hash is kept)."""
    if role not in ("viewer", "operator", "engineer", "admin"):
        typer.echo(f"error: --role must be viewer, operator, engineer or admin, not {role!r}",
                   err=True)
        raise typer.Exit(code=2)
    db = _database(config, database_url)
    row, key = db.create_key(name=name, role=role)
    typer.echo(f"created {role} key {row.id} ({name}); store it now, it is not shown again:",
               err=True)
    typer.echo(key)


@app.command("list-keys")
def list_keys(config: ConfigOption = None, database_url: DatabaseOption = None) -> None:
    """List keys (ids, names, roles, prefixes; never the keys)."""
    db = _database(config, database_url)
    for row in db.list_keys():
        state = f"revoked {row.revoked_at.isoformat()}" if row.revoked_at else "active"
        typer.echo(f"{row.id}  {row.role:9} {row.prefix}...  {state}  {row.name}")


@app.command("revoke-key")
def revoke_key(
    key_id: Annotated[str, typer.Argument(help="Key id from list-keys.")],
    config: ConfigOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Revoke a key (running APIs stop accepting it within key_cache_s)."""
    from api._errors import NotFound

    db = _database(config, database_url)
    try:
        db.revoke_key(key_id)
    except NotFound as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    typer.echo(f"revoked {key_id}")


@app.command("check-config")
def check_config(config: ConfigOption = None) -> None:
    """Validate the settings, prepare the connections as start-up does (certificates, keys
    and the broker password file read), and print the settings (secrets masked).

    Exit 2: the settings are invalid; exit 1: start-up would fail (a file is missing or
    unreadable), with the same message ``api run`` gives.
    """
    settings = _settings(config)
    from api._errors import ApiError
    from api._services import prepare_connections

    try:
        prepare_connections(settings)
    except ApiError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    typer.echo(json.dumps(settings.model_dump(mode="json"), indent=2))
