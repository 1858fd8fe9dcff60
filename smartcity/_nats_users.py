"""``smartcity nats users-sync``: one per NATS node, rendering the node's users from the
gateway-users KV bucket the API writes (:mod:`api._nats_users`) and reloading the node.

::

    every interval:  stream_info(KV_<bucket>).last_seq changed? (or the static file)
                         │ yes
                         ▼
                     snapshot: the last entry of every key (deleted keys left out)
                         │ render: users: [ static entries, one entry per gateway ]
                         ▼
                     file differs? ─ write it (temporary name, fsync, rename) ─ SIGHUP
                                     to the pid in pid_file ─ /varz config_load_time moved

The node's config includes the rendered file inside its application account
(``accounts { SC { jetstream: enabled, include "sc-users.conf" } }``, deploy/nats/node.conf);
the static file holds the entries kept by hand (the services: ingest, api, this sync) and
is copied in as it is. A gateway entry carries the hash from the bucket and permissions
derived here from its id (:func:`gateway_permissions`): its own topics only, MQTT only.
An entry whose key is not a valid gateway id or whose value is not ``{"bcrypt": hash}`` is
left out and logged (``skipped``).

Fail-static: while the bucket cannot be read (no quorum, no connection) the file stays as
it is, and the node keeps authenticating from it; a bucket that does not exist (answered
as such) holds no gateway. A node started while its sync is down uses the last file. A
reload that could not be signalled is signalled again on the next round.

Metrics (:class:`SyncMetrics`, ``--metrics-port``: ``/metrics`` on 127.0.0.1): renders,
reloads by result, the time of the last round that left the node current, the entries
skipped, the gateways rendered and the rounds the bucket could not be read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import ssl
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final

import nats
import nats.errors
import nats.js.errors
import typer
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from foundation import LogFormat, configure_logging
from telemetry import TopicError, check_cluster_id, mqtt_to_nats_subject

__all__ = [
    "SyncMetrics",
    "UsersSync",
    "UsersSyncConfig",
    "gateway_permissions",
    "render_users",
    "user_entry",
]

log = logging.getLogger("smartcity.nats_users")

#: The entry's field with the password hash (as :mod:`api._nats_users` writes it).
_HASH_FIELD: Final = "bcrypt"
#: A bcrypt hash as nats-server recognises one (``$2a$``/``$2b$``, cost, 53 characters).
_BCRYPT: Final = re.compile(r"\$2[aby]\$\d{2}\$[./A-Za-z0-9]{53}")
_RELOAD_WAIT_S: Final = 5.0


def gateway_permissions(topic_root: str, gateway: str) -> dict[str, Any]:
    """A gateway's grants (docs/cluster.md, "Permissions"): publish under its own topics
    except its ``cmd`` and ``config/desired``, subscribe to those two only."""
    g = mqtt_to_nats_subject(f"{topic_root}/v1/{gateway}")
    own_in = [f"{g}.cmd", f"{g}.config.desired"]
    # The server's own $MQTT.> subjects (QoS 1 delivery, sessions, retained) need no grant
    # since nats-server 2.14 (implicit), and MQTT clients cannot subscribe there.
    return {"publish": {"allow": [f"{g}.>"], "deny": own_in}, "subscribe": {"allow": own_in}}


def user_entry(name: str, password: str, *, topic_root: str | None) -> str:
    """One item of an account's ``users`` list; ``topic_root=None``: a service (the whole
    account), else a gateway of that root (its own topics, MQTT only)."""
    head = f"{{user: {json.dumps(name)}, password: {json.dumps(password)}"
    if topic_root is None:
        return head + "}"
    perms = json.dumps(gateway_permissions(topic_root, name))
    return f'{head}, allowed_connection_types: ["MQTT"], permissions: {perms}}}'


def render_users(static: str, gateways: Mapping[str, str], *, topic_root: str) -> str:
    """The include file: ``users: [...]`` with the static entries, then one entry per
    gateway (id -> password or bcrypt hash), sorted."""
    lines = [
        "# Written by smartcity nats users-sync: do not edit (the static entries come",
        "# from its --static-users file, the gateways from the KV bucket).",
        "users: [",
    ]
    lines += [f"  {line}" if line.strip() else "" for line in static.strip().splitlines()]
    lines += [f"  {user_entry(gw, gateways[gw], topic_root=topic_root)}" for gw in sorted(gateways)]
    return "\n".join([*lines, "]", ""])


def _hash_of(key: str, value: bytes | None) -> str:
    """The entry's bcrypt hash; ValueError saying what is wrong with it."""
    try:
        check_cluster_id("gateway id", key)
    except TopicError as exc:
        raise ValueError(exc.reason) from exc
    try:
        body = json.loads(value or b"")
    except ValueError as exc:
        raise ValueError(f"value is not JSON: {exc}") from exc
    hashed = body.get(_HASH_FIELD) if isinstance(body, dict) else None
    if not isinstance(hashed, str) or not _BCRYPT.fullmatch(hashed):
        raise ValueError(f"value has no bcrypt hash in {_HASH_FIELD!r}")
    return hashed


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class SyncMetrics:
    """The sync's Prometheus metrics (``smartcity_users_sync_*``), in its own registry."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        p = "smartcity_users_sync"
        self.renders = Counter(
            f"{p}_renders", "Users files written (the node given a new set of users)", registry=r
        )
        self.reloads = Counter(
            f"{p}_reloads",
            "Reloads of the node by result: confirmed (/varz config_load_time moved), sent "
            "(no --monitor to confirm), unconfirmed, failed (no signal sent)",
            ["result"],
            registry=r,
        )
        self.last_success = Gauge(
            f"{p}_last_success_timestamp_seconds",
            "Unix time of the last round that read the bucket and left the node current",
            registry=r,
        )
        self.skipped = Gauge(
            f"{p}_entries_skipped",
            "Bucket entries left out of the last snapshot (bad key or value)",
            registry=r,
        )
        self.gateways = Gauge(f"{p}_gateways", "Gateway users in the last snapshot", registry=r)
        self.bucket_errors = Counter(
            f"{p}_bucket_errors",
            "Rounds in which the bucket could not be read (the node kept its file)",
            registry=r,
        )


@dataclass(frozen=True, kw_only=True)
class UsersSyncConfig:
    """One node's sync: where the bucket is, what to render, which server to reload."""

    servers: tuple[str, ...]
    username: str
    password: str
    ca_file: Path | None = None
    bucket: str = "sc_gateway_users"
    topic_root: str = "sc"
    static_users: Path
    out: Path
    pid_file: Path
    #: The node's monitoring URL (``http://127.0.0.1:8222``): the reload is confirmed by its
    #: ``/varz`` ``config_load_time``; unset: the signal is sent and not confirmed.
    monitor: str | None = None
    interval_s: float = 1.0
    #: Serve ``/metrics`` on 127.0.0.1 at this port (0: any free port); ``None``: off.
    metrics_port: int | None = None


class UsersSync:
    """The loop of one node's sync (:meth:`run` until cancelled)."""

    def __init__(self, config: UsersSyncConfig) -> None:
        self.config = config
        self._seq: int | None = None
        self._gateways: dict[str, str] = {}
        #: The file was written but the node was not signalled: signal it next round.
        self._reload_due = False
        #: Whether the node was seen to load the file (False after an unconfirmed reload: a
        #: node that refused the file keeps its old users until the next change).
        self._node_current = True
        #: Renders applied (the file written and the node signalled), for tests and logs.
        self.applied = 0
        self.metrics = SyncMetrics()
        #: The port ``/metrics`` is served on while :meth:`run` runs (``None``: off).
        self.metrics_port: int | None = None

    async def run(self) -> None:
        """Connect (reconnecting for ever) and keep the file current every ``interval_s``;
        serve ``/metrics`` meanwhile when ``metrics_port`` is set."""
        c = self.config
        if c.metrics_port is None:
            await self._run()
            return
        server, thread = start_http_server(
            c.metrics_port, addr="127.0.0.1", registry=self.metrics.registry
        )
        self.metrics_port = server.server_port
        log.info("metrics served", extra={"url": f"http://127.0.0.1:{self.metrics_port}/metrics"})
        try:
            await self._run()
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
            self.metrics_port = None

    async def _run(self) -> None:
        c = self.config
        if not c.out.exists():  # the node can start before the first sync round
            _write(c.out, render_users(c.static_users.read_text(), {}, topic_root=c.topic_root))

        async def quiet(exc: Exception) -> None:
            log.debug("NATS client error", extra={"error": str(exc)})

        options: dict[str, Any] = {
            "servers": list(c.servers),
            "name": "users-sync",
            "user": c.username,
            "password": c.password,
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 1,
            "connect_timeout": 2,
            "error_cb": quiet,
        }
        if c.ca_file is not None:
            options["tls"] = ssl.create_default_context(cafile=str(c.ca_file))
        nc = await nats.connect(**options)
        try:
            js = nc.jetstream(timeout=5.0)
            while True:
                await self.tick(js)
                await asyncio.sleep(c.interval_s)
        finally:
            await nc.close()

    async def tick(self, js: JetStreamContext) -> bool:
        """One round; whether the node was given a new file."""
        c = self.config
        try:
            try:
                info = await js.stream_info(f"KV_{c.bucket}")
                seq: int | None = info.state.last_seq
            except nats.js.errors.NotFoundError:
                seq = None  # no bucket: no gateway
            if seq != self._seq:
                self._gateways = {} if seq is None else await self._snapshot(js)
                self._seq = seq
        except (nats.errors.Error, OSError) as exc:
            self.metrics.bucket_errors.inc()
            log.warning(
                "gateway users not read; the node keeps its file",
                extra={"bucket": c.bucket, "error": str(exc) or type(exc).__name__},
            )
            return False
        self.metrics.gateways.set(len(self._gateways))
        text = render_users(c.static_users.read_text(), self._gateways, topic_root=c.topic_root)
        current = False
        with contextlib.suppress(OSError):
            current = c.out.read_text() == text
        if current and not self._reload_due:
            if self._node_current:
                self.metrics.last_success.set_to_current_time()
            return False
        if not current:
            _write(c.out, text)
            self.metrics.renders.inc()
        result = await self._reload()
        self.metrics.reloads.labels(result).inc()
        self._reload_due = result == "failed"
        self._node_current = result in ("confirmed", "sent")
        if not self._node_current:
            return False
        self.metrics.last_success.set_to_current_time()
        self.applied += 1
        log.info(
            "gateway users rendered",
            extra={
                "bucket": c.bucket,
                "revision": self._seq,
                "gateways": len(self._gateways),
                "file": str(c.out),
            },
        )
        return True

    async def _snapshot(self, js: JetStreamContext) -> dict[str, str]:
        kv = await js.key_value(self.config.bucket)
        watcher = await kv.watchall(ignore_deletes=True)
        found: dict[str, str] = {}
        skipped = 0
        try:
            while (entry := await watcher.updates(timeout=5.0)) is not None:  # type: ignore[no-untyped-call]
                try:
                    found[entry.key] = _hash_of(entry.key, entry.value)
                except ValueError as exc:
                    skipped += 1
                    log.warning(
                        "gateway user skipped",
                        extra={"key": entry.key, "revision": entry.revision, "reason": str(exc)},
                    )
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
        self.metrics.skipped.set(skipped)
        return found

    async def _reload(self) -> str:
        """Signal the node to reload; the result: ``confirmed``, ``sent`` (nothing to
        confirm with), ``unconfirmed`` or ``failed`` (no signal sent)."""
        c = self.config
        before = await asyncio.to_thread(self._load_time)
        try:
            pid = int(c.pid_file.read_text().split()[0])
            os.kill(pid, signal.SIGHUP)  # what `nats-server --signal reload=<pid>` sends
        except (OSError, ValueError, IndexError) as exc:
            log.error("node not reloaded", extra={"pid_file": str(c.pid_file), "error": str(exc)})
            return "failed"
        if c.monitor is None:
            return "sent"
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_RELOAD_WAIT_S + 1):
                for _ in range(int(_RELOAD_WAIT_S / 0.05)):
                    if await asyncio.to_thread(self._load_time) not in (before, None):
                        return "confirmed"
                    await asyncio.sleep(0.05)
        log.error(
            "node reload not confirmed (see its log: a config it refused keeps the old users)",
            extra={"monitor": c.monitor, "pid": pid},
        )
        return "unconfirmed"

    def _load_time(self) -> str | None:
        url = f"{self.config.monitor}/varz"
        with (
            contextlib.suppress(OSError, ValueError),
            urllib.request.urlopen(url, timeout=1.0) as resp,  # noqa: S310 (http only)
        ):
            return str(json.loads(resp.read()).get("config_load_time"))
        return None


app = typer.Typer(name="nats", help="The cluster profile's NATS nodes.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """The cluster profile's NATS nodes (docs/cluster.md)."""


@app.command("users-sync")
def users_sync(
    servers: Annotated[list[str], typer.Option("--server", help="NATS URL (repeat for each node)")],
    static_users: Annotated[Path, typer.Option(help="entries kept by hand (the services)")],
    out: Annotated[Path, typer.Option(help="the users file the node config includes")],
    pid_file: Annotated[Path, typer.Option(help="the node's pid_file")],
    username: Annotated[str, typer.Option()] = "users-sync",
    password_file: Annotated[Path | None, typer.Option()] = None,
    ca_file: Annotated[Path | None, typer.Option(help="CA of tls:// servers")] = None,
    bucket: Annotated[str, typer.Option()] = "sc_gateway_users",
    topic_root: Annotated[str, typer.Option()] = "sc",
    monitor: Annotated[str | None, typer.Option(help="http://host:port of the node")] = None,
    interval: Annotated[float, typer.Option(min=0.1, max=3600)] = 1.0,
    metrics_port: Annotated[
        int | None,
        typer.Option(min=0, max=65535, help="serve Prometheus /metrics on 127.0.0.1:PORT"),
    ] = None,
    log_format: Annotated[str | None, typer.Option(help="json or console")] = None,
) -> None:
    """Render this node's users from the gateway-users bucket and reload the node."""
    fmt: LogFormat | None = (
        "json" if log_format == "json" else ("console" if log_format == "console" else None)
    )
    configure_logging(fmt=fmt)
    try:
        password = "" if password_file is None else password_file.read_text().splitlines()[0]
        static_users.read_text()
    except (OSError, IndexError) as exc:
        typer.echo(f"users-sync: {exc}", err=True)
        raise typer.Exit(code=78) from None
    sync = UsersSync(
        UsersSyncConfig(
            servers=tuple(servers),
            username=username,
            password=password,
            ca_file=ca_file,
            bucket=bucket,
            topic_root=topic_root,
            static_users=static_users,
            out=out,
            pid_file=pid_file,
            monitor=monitor,
            interval_s=interval,
            metrics_port=metrics_port,
        )
    )

    async def main() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel if task else (lambda: None))
        with contextlib.suppress(asyncio.CancelledError):
            await sync.run()

    asyncio.run(main())


if __name__ == "__main__":
    app()
