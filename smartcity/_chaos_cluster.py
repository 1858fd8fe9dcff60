"""The chaos run in the cluster profile (``ChaosConfig.cluster``, ``smartcity sim chaos
--cluster``): the same timeline, fleet and verdict as :mod:`smartcity._chaos`, on the
servers of docs/cluster.md::

    GatewayFleet (MQTT 3.1.1, one NATS user per gateway, gateway i starts at node i mod 3
        │ and fails over in order; spool + seq replay; ledger)
        ▼ QoS 1: PUBACK once $MQTT_msgs stored the batch on a quorum
    nats-0  nats-1  nats-2   (NatsCluster: JetStream + MQTT, $MQTT_msgs replicas 3)
        │ durable "ingest-0"          │ durable "ingest-1"       (one consumer per replica)
        ▼                             ▼
    ingest-0-0, ingest-0-1        ingest-1-0, ingest-1-1       (python -m ingest run,
        │ source: jetstream            │                         own process groups)
        ▼                             ▼
    influx-0                      influx-1                     (InfluxDB replicas)

    events:  node_kill        SIGKILL one node: the leader of $MQTT_msgs, the JetStream
                              meta leader, or a node leading neither (read from the nodes'
                              /jsz when the event begins; ChaosConfig.node_kill_targets in
                              turn); started again on the same ports and store
             cluster_restart  every node stopped (SIGKILL all, or SIGTERM all), started
                              again: no quorum meanwhile, gateways keep spooling
             replica_kill     SIGKILL one InfluxDB replica, start it again on its data:
                              its consumer's messages wait in $MQTT_msgs meanwhile
             worker_kill      SIGKILL ``ingest-<replica>-<n>``: its unacked messages come
                              back to its group's other worker after AckWait
             uplink_loss, reboot  as in the single-node run

The NATS cluster is one component of the schedule (a node_kill and a cluster_restart never
overlap, so two nodes are never down at once by design); each replica and each worker are
components of their own, and events on different components overlap.

The ledger is checked against **every** replica (``ChaosReport.replicas``), and the catch-up
after the last fault is the time until every replica held what was acknowledged then (each
replica's own is in its entry). There is no API process: gap repair answers a broker that
forgot what it acknowledged, and here a PUBACK means stored on a quorum.
"""

from __future__ import annotations

import json
import random
import secrets
import time
from pathlib import Path
from typing import Any

from simulators import FleetConfig, Scenario, build_layout
from smartcity._chaos_plan import ChaosConfig, ChaosEvent, scaled_scenario, sim_start_ns
from smartcity._chaos_procs import WorkerProcess
from smartcity._chaos_run import _Run
from smartcity._localstack import Influxd, ServiceError
from smartcity._localstack_nats import NatsCluster, NatsUser

__all__ = ["ClusterRun", "cluster_worker_config"]


class ClusterRun(_Run):
    """The services of a cluster-profile chaos run, and what its events do to them."""

    def _setup(self) -> None:
        cfg, data = self.config, self.data
        self.scenario = scaled_scenario(cfg)
        ids = build_layout(self.scenario).gateway_ids
        self._passwords = {gw: secrets.token_urlsafe(18) for gw in ids}
        self.ingest_user = NatsUser(
            name="ingest", password=secrets.token_urlsafe(18), role="service"
        )
        users = [NatsUser(name=gw, password=pw) for gw, pw in self._passwords.items()]
        self.cluster = NatsCluster(
            data_dir=data / "nats", users=[*users, self.ingest_user], nodes=cfg.nodes,
            topic_root=cfg.topic_root,
        )  # fmt: skip
        self.stores = [Influxd(data_dir=data / f"influx-{i}") for i in range(cfg.replicas)]
        #: node_kill events in progress: id(event) -> the node killed.
        self._killed: dict[int, int] = {}
        self._rng = random.Random(cfg.seed)

    def _credentials(self, gateway: str) -> tuple[str, str]:
        return gateway, self._passwords[gateway]

    def status(self) -> str:
        nodes = "".join("U" if n.running else "-" for n in self.cluster.nodes)
        stores = "".join("U" if s.running else "-" for s in self.stores)
        return f"nats {nodes} influx {stores}"

    # -- start and stop --------------------------------------------------------------------
    def start(self) -> None:
        self.start_services()
        start_ns = sim_start_ns(self.scenario, self.config, time.time_ns())
        self.start_fleet(self.fleet_config(self.scenario, start_ns))

    def start_services(self) -> None:
        cfg = self.config
        self.note("starting the NATS cluster", nodes=cfg.nodes,
                  mqtt=",".join(self.cluster.mqtt_hosts))  # fmt: skip
        self.cluster.start()
        for i, store in enumerate(self.stores):
            self.note("starting influxd", replica=i, url=store.url)
            store.start()
            store.create_database(cfg.database)
        secret = self.data / "ingest.nats.password"
        secret.write_text(self.ingest_user.password + "\n")
        secret.chmod(0o600)
        for r, store in enumerate(self.stores):
            for n in range(cfg.workers):
                cid = f"ingest-{r}-{n}"
                path = self.data / f"{cid}.yaml"
                path.write_text(json.dumps(
                    cluster_worker_config(cfg, cid, self.cluster, store, durable=f"ingest-{r}",
                                          password_file=secret)
                ))  # fmt: skip
                worker = WorkerProcess(cid, path, self.data / f"{cid}.log")
                self.workers.append(worker)
                worker.start()
        # Every replica's durable consumer must exist before the first publish: $MQTT_msgs
        # keeps a message only for the consumers it has then (docs/cluster.md).
        self.wait_workers()

    def fleet_config(self, scenario: Scenario, start_ns: int) -> FleetConfig:
        (host, port), *others = [(n.host, n.mqtt_port) for n in self.cluster.nodes]
        return FleetConfig(
            scenario=scenario, host=host, port=port, hosts=tuple(others),
            protocol="mqtt311", credentials=self._credentials, client_prefix="chaos",
            drain_timeout_s=min(self.config.drain_timeout_s, 120.0), start_ns=start_ns,
            # No API here, so nobody asks for a resend or sends commands: no kept batches,
            # no cmd subscription (each would be a consumer on $MQTT_msgs).
            keep_delivered_s=0.0, commands=False,
        )  # fmt: skip

    def close(self) -> None:
        if self.fleet is not None:
            self.fleet.stop()
        if self.fleet_thread is not None:
            self.fleet_thread.join(180)
        if self.monitor is not None:
            self.monitor.stop()
        for w in self.workers:
            w.terminate()
        for store in self.stores:
            store.stop()
        self.cluster.stop()

    # -- faults ------------------------------------------------------------------------------
    def begin(self, event: ChaosEvent, now: float) -> None:
        event.started_s = now
        if event.kind == "node_kill":
            index, led = self._pick_node(event.target)
            self._killed[id(event)] = index
            self.cluster.kill(index)
            self.note("nats SIGKILL", node=self.cluster.nodes[index].server_name,
                      target=event.target, led=led or "nothing", down_s=event.down_s)  # fmt: skip
        elif event.kind == "cluster_restart":
            if event.target == "SIGKILL all":
                for n in self.cluster.nodes:
                    n.kill()
            else:
                self.cluster.stop()
            self.note("nats cluster down", mode=event.target, down_s=event.down_s)
        elif event.kind == "replica_kill":
            index = _replica(event)
            self.stores[index].kill()
            self.note("influxd SIGKILL", replica=index, down_s=event.down_s)
        else:
            super().begin(event, now)

    def end(self, event: ChaosEvent) -> None:
        if event.kind == "node_kill":
            index = self._killed.pop(id(event))
            self.cluster.start(node=index, timeout=90)
            self.note("nats node started", node=self.cluster.nodes[index].server_name,
                      stream_leader=self.cluster.leader_of())  # fmt: skip
        elif event.kind == "cluster_restart":
            self.cluster.start(timeout=120)
            self.note("nats cluster started", stream_leader=self.cluster.leader_of())
        elif event.kind == "replica_kill":
            index = _replica(event)
            self.stores[index].start(timeout=60)
            self.note("influxd started", replica=index)
        else:
            super().end(event)

    def _pick_node(self, target: str) -> tuple[int, str]:
        """The running node a node_kill hits, and what it led (``stream,meta``)."""
        running = [n for n in self.cluster.nodes if n.running]
        if not running:
            raise ServiceError("node_kill: no NATS node is running")
        stream = self.cluster.leader_of()
        meta = next((m for n in running if (m := n.meta_leader()) is not None), None)
        leaders = {stream, meta}
        name: str | None
        if target == "stream leader":
            name = stream
        elif target == "meta leader":
            name = meta
        else:
            followers = [n.server_name for n in running if n.server_name not in leaders]
            name = self._rng.choice(followers) if followers else None
        node = next((n for n in running if n.server_name == name), None)
        if node is None:  # not known right now (an election): any running node
            node = self._rng.choice(running)
        led = [what for what, leader in (("stream", stream), ("meta", meta))
               if leader == node.server_name]  # fmt: skip
        return node.index, ",".join(led)


def _replica(event: ChaosEvent) -> int:
    return int(event.target.rpartition("-")[2])


def cluster_worker_config(
    config: ChaosConfig,
    client_id: str,
    cluster: NatsCluster,
    store: Influxd,
    *,
    durable: str,
    password_file: Path,
) -> dict[str, Any]:
    """An ingest worker of one replica's group: source ``jetstream``, that group's durable
    consumer, that replica's InfluxDB."""
    return {
        "source": "jetstream",
        "jetstream": {"servers": cluster.urls, "username": "ingest",
                      "password_file": str(password_file), "durable": durable,
                      "ack_wait": config.ack_wait_s},
        "mqtt": {"client_id": client_id, "topic_root": config.topic_root},
        "influx": {"url": store.url, "database": config.database},
        "log_level": "INFO",
        "log_format": "json",
    }  # fmt: skip
