"""`smartcity ingest`: MQTT shared subscription to InfluxDB, lossless, scale-out workers.

Only typer and the stdlib are imported at module level, so `smartcity --help` stays fast
and a gateway install does not need server packages to show it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    name="ingest",
    help="Ingest: MQTT shared subscription to InfluxDB, lossless, scale-out workers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML config file (see deploy/ingest.yaml). Environment variables "
        "SMARTCITY_INGEST_<SECTION>__<KEY> override it; flags override both.",
        exists=False,
        dir_okay=False,
    ),
]


def _overrides(**flags: Any) -> dict[str, Any]:
    """Flags named ``section__key`` to a nested mapping, skipping unset ones."""
    out: dict[str, Any] = {}
    for name, value in flags.items():
        if value is None:
            continue
        *sections, key = name.split("__")
        target = out
        for section in sections:
            target = target.setdefault(section, {})
        target[key] = value
    return out


def _load(config: Path | None, overrides: dict[str, Any]) -> Any:
    from ingest._config import load_config
    from ingest._errors import ConfigError

    try:
        return load_config(config, overrides)
    except ConfigError as exc:
        typer.echo(f"error: invalid configuration: {exc}", err=True)
        raise typer.Exit(code=2) from exc


@app.command("run")
def run(
    config: ConfigOption = None,
    source: Annotated[
        str | None,
        typer.Option(help="mqtt (shared subscription) or jetstream (cluster, docs/cluster.md)."),
    ] = None,
    mqtt_host: Annotated[str | None, typer.Option(help="Broker host.")] = None,
    mqtt_port: Annotated[int | None, typer.Option(help="Broker port.")] = None,
    client_id: Annotated[
        str | None, typer.Option(help="Stable worker id: ingest-0, ingest-1, ...")
    ] = None,
    group: Annotated[str | None, typer.Option(help="Shared-subscription group.")] = None,
    topic_root: Annotated[str | None, typer.Option(help="Topic namespace root.")] = None,
    receive_maximum: Annotated[
        int | None, typer.Option(help="MQTT v5 Receive Maximum (unacked messages in flight).")
    ] = None,
    influx_url: Annotated[str | None, typer.Option(help="InfluxDB base URL.")] = None,
    database: Annotated[str | None, typer.Option(help="InfluxDB database.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Readings per write.")] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus /metrics on this port.")
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING, ERROR.")] = None,
    log_format: Annotated[str | None, typer.Option(help="json or console.")] = None,
) -> None:
    """Run one ingest worker until SIGTERM/SIGINT (then acks only what was written)."""
    cfg = _load(
        config,
        _overrides(
            source=source,
            mqtt__host=mqtt_host,
            mqtt__port=mqtt_port,
            mqtt__client_id=client_id,
            mqtt__group=group,
            mqtt__topic_root=topic_root,
            mqtt__receive_maximum=receive_maximum,
            influx__url=influx_url,
            influx__database=database,
            batch__max_readings=batch_size,
            metrics_port=metrics_port,
            log_level=log_level.upper() if log_level else None,
            log_format=log_format,
        ),
    )
    from foundation import configure_logging
    from ingest._errors import IngestError
    from ingest._run import run_worker

    configure_logging(cfg.log_level, cfg.log_format)
    try:
        run_worker(cfg)
    except IngestError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc


@app.command("check-config")
def check_config(config: ConfigOption = None) -> None:
    """Validate the configuration and print it (secrets masked)."""
    cfg = _load(config, {})
    typer.echo(json.dumps(cfg.model_dump(mode="json"), indent=2))


deadletters_app = typer.Typer(
    name="deadletters",
    help="Dead letters: what ingest refused, stored in InfluxDB (measurement ingest_deadletter).",
    no_args_is_help=True,
)
app.add_typer(deadletters_app)


# The options the dead-letter commands share (which records, from which InfluxDB).
InfluxUrlOption = Annotated[str | None, typer.Option(help="InfluxDB base URL.")]
DatabaseOption = Annotated[str | None, typer.Option(help="InfluxDB database.")]
SinceOption = Annotated[
    str, typer.Option(help="How far back, an InfluxQL duration: 30m, 24h, 7d.")
]
GatewayOption = Annotated[str | None, typer.Option(help="Only this gateway's.")]
KindOption = Annotated[str | None, typer.Option(help="Only this kind (malformed, ...).")]
LimitOption = Annotated[int, typer.Option(min=1, max=100_000, help="At most this many.")]


@deadletters_app.command("list")
def deadletters_list(
    config: ConfigOption = None,
    influx_url: InfluxUrlOption = None,
    database: DatabaseOption = None,
    since: SinceOption = "7d",
    gateway: GatewayOption = None,
    kind: KindOption = None,
    limit: LimitOption = 100,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON record per line, payload included.")
    ] = False,
) -> None:
    """List stored dead letters, newest first: time, gateway, kind, reason, topic, seq.

    ``--json`` prints each whole record (the original payload, base64 when not UTF-8, cut
    past 64 KiB with its size and SHA-256): what an operator replays from.
    """
    from foundation import InfluxQueryError
    from ingest._replay import stored_records

    cfg = _load(config, _overrides(influx__url=influx_url, influx__database=database))
    query = _deadletter_query(since=since, gateway=gateway, kind=kind, limit=limit)
    try:
        points = list(stored_records(cfg, query))
    except InfluxQueryError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    for point in points:
        if as_json:
            record = json.loads(point.get("record") or "{}")
            record.setdefault("gateway", point.get("gateway"))
            record["time"] = point["time"]
            typer.echo(json.dumps(record))
        else:
            seq = point.get("seq")
            typer.echo(
                f"{point['time']}  {point.get('gateway')}  {point.get('kind')}  "
                f"seq={'-' if seq is None else seq}  {point.get('topic')}  "
                f"{point.get('reason')}"
            )


def _deadletter_query(*, since: str, gateway: str | None, kind: str | None, limit: int) -> str:
    from ingest._replay import deadletter_query

    try:
        return deadletter_query(since=since, gateway=gateway, kind=kind, limit=limit)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


@deadletters_app.command("replay")
def deadletters_replay(
    config: ConfigOption = None,
    influx_url: InfluxUrlOption = None,
    database: DatabaseOption = None,
    since: SinceOption = "7d",
    gateway: GatewayOption = None,
    kind: KindOption = None,
    limit: LimitOption = 1000,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Write nothing; say what would pass today.")
    ] = False,
    timeout: Annotated[
        float, typer.Option(min=1, help="Give up when InfluxDB has not taken it in this many s.")
    ] = 60.0,
    from_stream: Annotated[
        bool,
        typer.Option("--from-stream", help="Read the records from the replicated dead-letter "
                     "stream (jetstream.deadletters, the cluster profile) instead of InfluxDB."),
    ] = False,
    replica: Annotated[
        list[str] | None,
        typer.Option(help="With --from-stream: an InfluxDB (base URL) to replay into; repeat "
                     "it for each replica. Default: the config's influx.url."),
    ] = None,
) -> None:
    """Replay stored dead letters through today's checks and configuration, after what
    refused them was fixed (a gateway's clock, the vocabulary, a bug).

    Every check of the live path applies; what passes is written with its bookkeeping point,
    and rewriting what was stored before doubles nothing. Prints one line per record
    (stored, partly, refused, truncated, unreadable, summary, write_refused) and a JSON
    summary last.
    With --from-stream the records come from the dead-letter stream and go into every
    --replica (docs/cluster.md, "Dead letters in the cluster profile").
    """
    from foundation import InfluxQueryError
    from ingest._replay import replay, stored_records

    if from_stream:
        _replay_from_stream(config, influx_url, database, replica or [], since=since,
                            gateway=gateway, kind=kind, limit=limit, dry_run=dry_run,
                            timeout=timeout)  # fmt: skip
        return
    if replica:
        raise typer.BadParameter("--replica needs --from-stream (or use --influx-url)")
    cfg = _load(config, _overrides(influx__url=influx_url, influx__database=database))
    query = _deadletter_query(since=since, gateway=gateway, kind=kind, limit=limit)
    try:
        report = replay(cfg, stored_records(cfg, query), dry_run=dry_run, timeout=timeout)
    except (InfluxQueryError, TimeoutError) as exc:
        typer.echo(f"error: {exc or 'InfluxDB did not take the writes in time'}", err=True)
        raise typer.Exit(code=1) from exc
    for o in report.outcomes:
        typer.echo(f"{o.time}  {o.gateway}  {o.kind}  {o.result}  readings={o.readings}  "
                   f"{o.reason}")
    typer.echo(json.dumps({"dry_run": dry_run, **report.summary()}))


def _replay_from_stream(
    config: Path | None, influx_url: str | None, database: str | None, replicas: list[str],
    *, since: str, gateway: str | None, kind: str | None, limit: int, dry_run: bool,
    timeout: float,
) -> None:
    """``deadletters replay --from-stream``: read the stream once, replay into each replica.
    Progress on stderr; one line per record (the first replica's outcome), one JSON summary
    per replica, and the overall JSON summary last."""
    import sys

    from ingest._errors import IngestError
    from ingest._replay import replay
    from ingest._replay_stream import parse_since, read_stream

    _deadletter_query(since=since, gateway=gateway, kind=kind, limit=limit)  # validates them
    cfg = _load(config, _overrides(influx__url=influx_url, influx__database=database))
    targets = [_load(config, _overrides(influx__url=url, influx__database=database))
               for url in replicas] or [cfg]  # fmt: skip

    def progress(read: int, total: int) -> None:
        sys.stderr.write(f"\rread {read}/{total} records from the dead-letter stream")
        sys.stderr.flush()

    try:
        found = read_stream(cfg, since_s=parse_since(since), gateway=gateway, kind=kind,
                            limit=limit, progress=progress, timeout=timeout)  # fmt: skip
        sys.stderr.write("\n")
        reports = {}
        for target in targets:
            sys.stderr.write(f"replaying {len(found.points)} records into {target.influx.url}\n")
            reports[target.influx.url] = replay(target, found.points, dry_run=dry_run,
                                                timeout=timeout)  # fmt: skip
    except (IngestError, TimeoutError) as exc:
        typer.echo(f"error: {exc or 'InfluxDB did not take the writes in time'}", err=True)
        raise typer.Exit(code=1) from exc
    first = next(iter(reports.values()))
    for o in first.outcomes:
        typer.echo(f"{o.time}  {o.gateway}  {o.kind}  {o.result}  readings={o.readings}  "
                   f"{o.reason}")
    for url, report in reports.items():
        typer.echo(json.dumps({"replica": url, **report.summary()}))
    typer.echo(json.dumps({"dry_run": dry_run, **found.summary(),
                           "replicas": {u: r.summary() for u, r in reports.items()}}))


influxdb_app = typer.Typer(
    name="influxdb",
    help="InfluxDB users: an admin, then one least-privilege user per service "
    "(docs/server-install.md, InfluxDB).",
    no_args_is_help=True,
)
app.add_typer(influxdb_app)

AdminFile = Annotated[
    Path,
    typer.Option(help="The admin's 'user:password' file (mode 600), written by init."),
]


def _influx_target(config: Path | None, url: str | None, database: str | None) -> Any:
    cfg = _load(config, _overrides(influx__url=url, influx__database=database))
    from ingest._sink import _ssl_context  # the worker's own TLS settings for InfluxDB

    context = _ssl_context(cfg.influx)
    return cfg.influx, context if not isinstance(context, bool) else None


def _admin_error(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(code=1)


def _read_secret(password_file: Path | None, what: str) -> str:
    import sys

    if password_file is not None:
        lines = password_file.read_text().splitlines()
        return lines[0] if lines else ""
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass(f"password for {what}: ")
    return sys.stdin.readline().rstrip("\n")


@influxdb_app.command("init")
def influxdb_init(
    config: ConfigOption = None,
    url: InfluxUrlOption = None,
    database: Annotated[str | None, typer.Option(help="The platform's database.")] = None,
    retention: Annotated[
        str | None, typer.Option(help="Retention policy (default: the config's).")
    ] = None,
    duration: Annotated[str | None, typer.Option(help="Its duration: 90d, INF.")] = None,
    shard_duration: Annotated[str | None, typer.Option(help="Its shard duration: 1d.")] = None,
    admin_file: AdminFile = Path("/etc/smartcity/influxdb-admin"),
) -> None:
    """With auth-enabled = true and no users yet: create the admin (random password, written to
    --admin-file), the database and its default retention policy (the config's
    influx.retention, or the options). Idempotent: with a working admin file it only checks
    the rest."""
    from ingest._influx_admin import InfluxAdminError, init

    influx, context = _influx_target(config, url, database)
    rp = influx.retention
    try:
        init(influx.url, admin_file, database=influx.database, retention=retention or rp.name,
             duration=duration or rp.duration,
             shard_duration=shard_duration or rp.shard_duration, context=context)
    except InfluxAdminError as exc:
        raise _admin_error(exc) from exc
    typer.echo(f"admin in {admin_file}; database {influx.database}, retention policy "
               f"{retention or rp.name}. Next: smartcity ingest influxdb add-user ingest, "
               "then add-user api")


@influxdb_app.command("add-user")
def influxdb_add_user(
    role: Annotated[str, typer.Argument(help="ingest (read and write) or api (read only).")],
    config: ConfigOption = None,
    url: InfluxUrlOption = None,
    database: Annotated[str | None, typer.Option(help="The platform's database.")] = None,
    user: Annotated[str | None, typer.Option(help="User name (default: the role).")] = None,
    password_file: Annotated[
        Path | None, typer.Option(help="Read the password from this file (default: stdin).")
    ] = None,
    admin_file: AdminFile = Path("/etc/smartcity/influxdb-admin"),
) -> None:
    """Create the service's user, or give an existing one a new password; grants only what the
    service needs on the database (ingest: ALL, api: READ)."""
    from ingest._influx_admin import AdminCredentials, InfluxAdminError, add_user

    influx, context = _influx_target(config, url, database)
    try:
        creds = AdminCredentials.from_file(influx.url, admin_file, context)
        name = add_user(creds, role, _read_secret(password_file, user or role),
                        database=influx.database, username=user)
    except (InfluxAdminError, OSError) as exc:
        raise _admin_error(exc) from exc
    typer.echo(f"user {name}: {role} rights on {influx.database}")


@influxdb_app.command("remove-user")
def influxdb_remove_user(
    user: Annotated[str, typer.Argument(help="The user to drop.")],
    config: ConfigOption = None,
    url: InfluxUrlOption = None,
    admin_file: AdminFile = Path("/etc/smartcity/influxdb-admin"),
) -> None:
    """Drop a service user: its requests are refused (401) from then on."""
    from ingest._influx_admin import AdminCredentials, InfluxAdminError, remove_user

    influx, context = _influx_target(config, url, None)
    try:
        remove_user(AdminCredentials.from_file(influx.url, admin_file, context), user)
    except InfluxAdminError as exc:
        raise _admin_error(exc) from exc
    typer.echo(f"user {user} removed")
