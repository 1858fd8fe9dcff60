"""What the cluster does when JetStream's store is spent while a replica's consumer is down
(docs/cluster.md, "Stream budget while a replica is down"), against real processes only:

    gateway (paho, MQTT 3.1.1, persistent session, 100 KB QoS 1 messages, 30 in flight)
      ─▶ 3-node NATS cluster, max_file_store 16 MiB per node ─▶ $MQTT_msgs (interest)
            ├─▶ durable "a": a consumer that acks everything (the healthy replica)
            └─▶ durable "b": never consumed (its replica is down)

``$MQTT_msgs`` keeps every message for "b", so the store fills. Measured (nats-server
2.15.1): the publish that does not fit gets *no* PUBACK; the server logs "insufficient
resources" and closes the connection, and refuses the reconnect (the session cannot be
persisted) until space is freed. The gateway keeps its unacknowledged messages. Cutting "b"
loose (deleting its consumer) frees the stream; the gateway reconnects, its messages are
PUBACKed, and every PUBACKed message reached "a": nothing PUBACKed was lost.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time

import nats
import nats.errors
import nats.js.errors
import paho.mqtt.client as mqtt
import pytest
from cluster_kit import ClusterFactory, password
from nats.js import api as js_api
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from smartcity._localstack_nats import NatsCluster, NatsUser

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STORE = 16 * 1024**2
SIZE = 100_000
IN_FLIGHT = 30
AFTER = 20  # messages published after the store was freed
STREAM = "$MQTT_msgs"
FILTER = "$MQTT.msgs.sc.v1.*.telemetry"


class Gateway:
    """A publisher that keeps what is not PUBACKed (paho resends it after a reconnect, as
    the edge agent's spool does) and records which of its messages were PUBACKed.

    paho calls ``on_publish`` holding its own lock, and ``publish`` takes that lock too: the
    callback therefore only queues the mid (no lock of ours), and the mids are matched to
    message numbers under our lock, never the other way round (that order deadlocked).
    """

    def __init__(self, cluster: NatsCluster, user: NatsUser) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=user.name,
                                  protocol=MQTTProtocolVersion.MQTTv311,
                                  clean_session=False)  # fmt: skip
        self.client.username_pw_set(user.name, user.password)
        self.client.max_inflight_messages_set(IN_FLIGHT)
        self.client.reconnect_delay_set(1, 1)
        self._lock = threading.Lock()
        self._mids: dict[int, int] = {}
        self._pubacks: collections.deque[int] = collections.deque()
        self._acked: set[int] = set()
        self.published = 0
        self.disconnects = 0
        self.last_ack = time.monotonic()
        self.client.on_publish = self._on_publish
        self.client.on_disconnect = self._on_disconnect
        node = cluster.nodes[0]
        self.client.connect(node.host, node.mqtt_port, keepalive=10)
        self.client.loop_start()

    def _on_publish(self, _c: object, _u: object, mid: int, _rc: object, _p: object) -> None:
        self._pubacks.append(mid)
        self.last_ack = time.monotonic()

    def _match(self) -> None:
        """Under ``self._lock``: the queued PUBACKs' message numbers into ``_acked``."""
        while self._pubacks:
            self._acked.add(self._mids[self._pubacks.popleft()])

    @property
    def acked(self) -> set[int]:
        """The numbers of the messages PUBACKed so far."""
        with self._lock:
            self._match()
            return set(self._acked)

    def _on_disconnect(self, *_args: object) -> None:
        self.disconnects += 1

    def publish_until(self, total: int | None, stop: threading.Event) -> None:
        """Publish numbered messages (at most ``IN_FLIGHT`` unacked) until ``total`` or
        ``stop``."""
        while not stop.is_set() and (total is None or self.published < total):
            with self._lock:
                self._match()
                if self.published - len(self._acked) < IN_FLIGHT:
                    n = self.published
                    payload = b"x" * SIZE + f"{n:08d}".encode()
                    info = self.client.publish("sc/v1/gw-0/telemetry", payload, qos=1)
                    self._mids[info.mid] = n
                    self.published += 1
            time.sleep(0.005)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def _consume_a(cluster: NatsCluster, got: set[int], stop: asyncio.Event) -> None:
    nc = await nats.connect(cluster.urls, user="admin", password=cluster.admin.password)
    try:
        psub = await nc.jetstream().pull_subscribe_bind(durable="a", stream=STREAM)
        while not stop.is_set():
            try:
                msgs = await psub.fetch(50, timeout=0.5)
            except (nats.errors.TimeoutError, TimeoutError):  # nats-py raises either
                continue
            except nats.errors.Error:  # the consumer stalls while the store is full
                await asyncio.sleep(0.5)
                continue
            for m in msgs:
                got.add(int(m.data[-8:]))
                await m.ack()
    finally:
        await nc.close()


async def _delete_b(cluster: NatsCluster, within: float) -> None:
    nc = await nats.connect(cluster.urls, user="admin", password=cluster.admin.password)
    try:
        deadline = time.monotonic() + within
        while True:
            try:
                await nc.jsm().delete_consumer(STREAM, "b")
                return
            except nats.js.errors.NotFoundError:
                return  # deleted by an attempt whose answer timed out
            except nats.errors.Error:
                assert time.monotonic() < deadline, f"consumer b not deleted in {within}s"
                await asyncio.sleep(0.5)
    finally:
        await nc.close()


async def _stream_bytes(cluster: NatsCluster) -> int:
    nc = await nats.connect(cluster.urls, user="admin", password=cluster.admin.password)
    try:
        for _ in range(20):
            try:
                return int((await nc.jsm().stream_info(STREAM)).state.bytes)
            except nats.errors.Error:
                await asyncio.sleep(0.5)
        raise AssertionError("no stream info")
    finally:
        await nc.close()


def test_full_store_refuses_publishes_and_loses_nothing_pubacked(
    nats_cluster_factory: ClusterFactory,
) -> None:
    gw = NatsUser(name="gw-0", password=password())
    cluster = nats_cluster_factory([gw], max_file_store=STORE)

    async def consumers() -> None:
        nc = await nats.connect(cluster.urls, user="admin", password=cluster.admin.password)
        for durable in ("a", "b"):
            await nc.jsm().add_consumer(STREAM, js_api.ConsumerConfig(
                durable_name=durable, ack_policy=js_api.AckPolicy.EXPLICIT,
                filter_subject=FILTER, max_ack_pending=1000,
            ))  # fmt: skip
        await nc.close()

    asyncio.run(consumers())
    gateway = Gateway(cluster, gw)
    got: set[int] = set()
    stop_pub = threading.Event()

    async def main() -> tuple[int, int, int]:
        stop_a = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(_consume_a(cluster, got, stop_a), name="test.consumer-a")
            publisher = asyncio.create_task(asyncio.to_thread(gateway.publish_until, None,
                                                              stop_pub))  # fmt: skip
            # Phase 1: publish until no PUBACK came for 4 s (the store is spent).
            deadline = time.monotonic() + 40
            while time.monotonic() - gateway.last_ack < 4 or not gateway.acked:
                assert time.monotonic() < deadline, (
                    f"the store never filled: {len(gateway.acked)} PUBACKed"
                )
                await asyncio.sleep(0.2)
            stop_pub.set()
            await publisher
            full_published, full_acked = gateway.published, len(gateway.acked)
            full_bytes = await _stream_bytes(cluster)
            # Phase 2: cut the down replica loose; the gateway's messages go through.
            await _delete_b(cluster, 20)
            stop_pub.clear()
            total = full_published + AFTER
            await asyncio.to_thread(gateway.publish_until, total, stop_pub)
            deadline = time.monotonic() + 30
            while len(gateway.acked) < total or not set(range(total)) <= got:
                assert time.monotonic() < deadline, (
                    f"after freeing the store: {len(gateway.acked)} of {total} PUBACKed, "
                    f"{len(got)} consumed by a"
                )
                await asyncio.sleep(0.2)
            stop_a.set()
        return full_published, full_acked, full_bytes

    try:
        full_published, full_acked, full_bytes = asyncio.run(main())
    finally:
        stop_pub.set()
        gateway.close()
    logs = "".join(n.log_path.read_text(errors="replace") for n in cluster.nodes)
    print(
        f"store full at {full_acked} PUBACKed of {full_published} published "
        f"({full_bytes} bytes in {STREAM}); {gateway.disconnects} disconnects"
    )
    # The store was spent and the publishes past it got no PUBACK (the gateway kept them).
    assert full_bytes > 0.8 * STORE
    assert full_published > full_acked
    assert "insufficient resources" in logs
    assert gateway.disconnects >= 1  # the server closed the connection
    # Nothing PUBACKed was lost: every message reached the healthy replica's consumer.
    assert gateway.acked == set(range(full_published + AFTER))
    assert set(range(full_published + AFTER)) <= got
