"""The cluster profile with TLS on every connection, against real processes only:

    edge agent (uplink mqtt311, broker.tls.ca_file) ──mqtts──▶ 3-node NATS cluster
        (client tls {}, cluster { tls { verify } }, mqtt { tls {} }; one test CA)
    ingest worker (source jetstream, tls:// URLs, jetstream.tls.ca_file) ──▶ influxd

The agent's readings are stored; a NATS client and an MQTT client that trust another CA
are refused, and so is plain text on the client and MQTT ports; the nodes' routes are TLS:
the route port answers plain text with nothing, and a node configured without TLS that
routes to the cluster does not join it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import nats
import nats.errors
import paho.mqtt.client as mqtt
import pytest
from cluster_kit import ClusterFactory, password
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edge_agent import EdgeAgent, parse_config
from foundation import free_port
from ingest import load_config
from ingest._run import WorkerThread
from smartcity._localstack import Influxd
from smartcity._localstack_nats import NatsCluster, NatsTls, NatsUser
from telemetry import Reading
from tests.tls_helpers import Pki

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MEASUREMENT = "TrafficFlowObserved"
TICKS = 10
PER_TICK = 10


def _nats_tls(pki: Pki) -> NatsTls:
    return NatsTls(ca_file=pki.ca, cert_file=pki.server_cert, key_file=pki.server_key)


def _agent_config(tmp_path: Path, cluster: NatsCluster, user: NatsUser, ca: Path) -> Any:
    first, *others = cluster.mqtt_hosts
    host, port = first.rsplit(":", 1)
    return parse_config(
        {
            "gateway": {"id": user.name, "state_dir": str(tmp_path / user.name)},
            "broker": {
                "host": host,
                "port": int(port),
                "hosts": others,
                "protocol": "mqtt311",
                "username": user.name,
                "password": user.password,
                "client_id": f"edge-{user.name}",
                "tls": {"ca_file": str(ca)},
                "backoff_initial_s": 0.2,
                "backoff_max_s": 1.0,
                "connect_timeout_s": 3.0,
            },
            "batch": {"max_readings": 100, "max_age_s": 0.1},
            "health": {"interval_s": 1.0},
            "metrics": {"port": None},
            "tick_s": 0.05,
        },
        source="test",
    )


def _count(influxd: Influxd, db: str) -> int:
    answer = influxd.query(f'SELECT count("intensity") FROM "{MEASUREMENT}"', db=db)
    series = answer["results"][0].get("series") or []
    return int(series[0]["values"][0][1]) if series else 0


def _mqtt_connack(host: str, port: int, user: NatsUser, ca: Path | None) -> str:
    """An MQTT 3.1.1 CONNECT: ``"accepted"``, ``"refused"`` (CONNACK != 0), ``"closed"``
    or the error that ended the connection attempt."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{time.monotonic_ns()}",
                         protocol=MQTTProtocolVersion.MQTTv311)  # fmt: skip
    client.username_pw_set(user.name, user.password)
    if ca is not None:
        client.tls_set_context(ssl.create_default_context(cafile=str(ca)))
    result: list[str] = []
    client.on_connect = lambda _c, _u, _f, rc, _p: result.append(
        "refused" if rc.is_failure else "accepted"
    )
    try:
        client.connect(host, port, keepalive=10)
        end = time.monotonic() + 5
        while not result and time.monotonic() < end:
            if client.loop(0.1) != mqtt.MQTT_ERR_SUCCESS:
                return "closed"
    except (OSError, ssl.SSLError) as exc:
        return type(exc).__name__
    finally:
        client.disconnect()
        sock = client.socket()
        if sock is not None:
            sock.close()
    return result[0] if result else "no CONNACK"


def _handshake(host: str, port: int, ca: Path) -> str:
    """A TLS handshake trusting ``ca``: "" when it passed, else the error's name."""
    ctx = ssl.create_default_context(cafile=str(ca))
    try:
        with (
            socket.create_connection((host, port), 3) as raw,
            ctx.wrap_socket(raw, server_hostname=host),
        ):
            return ""
    except (OSError, ssl.SSLError) as exc:
        return type(exc).__name__


async def _nats_refused(cluster: NatsCluster, user: NatsUser, ca: Path | None) -> str:
    """Connect with ``ca`` (``None``: plain ``nats://``); the error's name, or "" when in."""
    node = cluster.nodes[0]
    options: dict[str, Any] = {"user": user.name, "password": user.password,
                               "connect_timeout": 3, "allow_reconnect": False,
                               "max_reconnect_attempts": 0}  # fmt: skip
    if ca is None:
        servers = [f"nats://{node.host}:{node.port}"]
    else:
        servers = [node.url]
        options["tls"] = ssl.create_default_context(cafile=str(ca))
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(type(exc).__name__)

    try:
        nc = await nats.connect(servers, error_cb=on_error, **options)
    except (OSError, ssl.SSLError, nats.errors.Error) as exc:
        return type(exc).__name__
    await nc.close()
    return ""


def _plain_node_joins(tmp_path: Path, cluster: NatsCluster, seconds: float) -> int:
    """Start a node whose routes point at the cluster's route ports without TLS; how many
    routes it had after ``seconds`` (it is stopped again)."""
    http = free_port("127.0.0.1")
    conf = tmp_path / "plain-node.conf"
    routes = ", ".join(f'"nats-route://{n.host}:{n.cluster_port}"' for n in cluster.nodes)
    conf.write_text(
        f'server_name: "intruder"\nlisten: "127.0.0.1:{free_port("127.0.0.1")}"\n'
        f'http: "127.0.0.1:{http}"\n'
        f'cluster {{\n  name: "{cluster.name}"\n  listen: "127.0.0.1:{free_port("127.0.0.1")}"\n'
        f"  routes: [{routes}]\n}}\n"
    )
    log = (tmp_path / "plain-node.log").open("wb")
    proc = subprocess.Popen([cluster.binary, "-c", str(conf)], stdout=log, stderr=log)
    try:
        time.sleep(seconds)
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/routez", timeout=2) as resp:
            return int(json.loads(resp.read())["num_routes"])
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_tls_on_client_route_and_mqtt_connections(
    nats_cluster_factory: ClusterFactory,
    influxd: Influxd,
    influx_db: str,
    pki: Pki,
    tmp_path: Path,
) -> None:
    gw = NatsUser(name="gw-0", password=password())
    ingest_user = NatsUser(name="ingest", password=password(), role="service")
    cluster = nats_cluster_factory([gw, ingest_user], tls=_nats_tls(pki))
    assert all(u.startswith("tls://") for u in cluster.urls)
    # The routes came up (over TLS: plain text is not spoken on the route port at all).
    assert all(n.varz("routez")["num_routes"] >= 2 for n in cluster.nodes)

    worker = WorkerThread(
        load_config(
            None,
            {
                "source": "jetstream",
                "jetstream": {
                    "servers": cluster.urls,
                    "username": ingest_user.name,
                    "password": ingest_user.password,
                    "tls": {"ca_file": str(pki.ca)},
                    "ack_wait": 10,
                },
                "mqtt": {"client_id": "ingest-0"},
                "influx": {"url": influxd.url, "database": influx_db},
                "batch": {"max_age": 0.05},
            },
        )
    )
    agent = EdgeAgent(_agent_config(tmp_path, cluster, gw, pki.ca))
    base_ts = (time.time_ns() // 10**9 - 600) * 10**9

    async def main() -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(agent.run(), name="test-agent.run")
            await asyncio.wait_for(agent.ready.wait(), 15)
            for tick in range(TICKS):
                agent.submit([
                    Reading(device="loop-1", measurement=MEASUREMENT,
                            ts=base_ts + (tick * PER_TICK + i) * 1000,
                            fields={"intensity": float(i)})
                    for i in range(PER_TICK)
                ], None)  # fmt: skip
                await asyncio.sleep(0.05)
            deadline = time.monotonic() + 15
            while await asyncio.to_thread(_count, influxd, influx_db) < TICKS * PER_TICK:
                assert time.monotonic() < deadline, "readings not stored over TLS in 15 s"
                await asyncio.sleep(0.2)
            agent.stop()

    with worker:
        asyncio.run(main())
    assert _count(influxd, influx_db) == TICKS * PER_TICK

    # Another CA: the NATS client and the MQTT client refuse the servers' certificate.
    node = cluster.nodes[0]
    assert asyncio.run(_nats_refused(cluster, ingest_user, pki.rogue_ca)) != ""
    assert asyncio.run(_nats_refused(cluster, ingest_user, pki.ca)) == ""  # the right CA
    assert _handshake(node.host, node.mqtt_port, pki.rogue_ca) == "SSLCertVerificationError"
    assert _handshake(node.host, node.mqtt_port, pki.ca) == ""
    assert _mqtt_connack(node.host, node.mqtt_port, gw, pki.ca) == "accepted"
    # Plain text on the TLS ports: no NATS session, no CONNACK.
    assert asyncio.run(_nats_refused(cluster, ingest_user, None)) != ""
    assert _mqtt_connack(node.host, node.mqtt_port, gw, None) != "accepted"
    # The route port: a plain-text peer gets not even the INFO line.
    with socket.create_connection((node.host, node.cluster_port), 2) as s:
        s.settimeout(5)
        s.sendall(b'CONNECT {"verbose":false}\r\nPING\r\n')
        received = b""
        with contextlib.suppress(OSError):  # closed, reset or silent: all refusals
            while chunk := s.recv(4096):
                received += chunk
        assert b"INFO" not in received, received
        assert b"PONG" not in received, received
    # A node without TLS pointing its routes at the cluster does not join it.
    assert _plain_node_joins(tmp_path, cluster, 3.0) == 0
    assert all(
        "intruder" not in {r.get("remote_name") for r in n.varz("routez")["routes"]}
        for n in cluster.nodes
    )
