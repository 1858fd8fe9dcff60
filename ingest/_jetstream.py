"""The ``jetstream`` source: a durable pull consumer on a NATS JetStream cluster, behind the
same few calls as the MQTT session (``_session.py``), so the worker, its batching, writer
and ack ledger are the same in both profiles.

::

    gateways ─MQTT 3.1.1 QoS 1─▶ any node ─▶ $MQTT_msgs (stored on a quorum, then PUBACK)
                                                 │ durable pull consumer <durable>,
                                                 │ filter $MQTT.msgs.<root>.v1.*.telemetry,
                                                 │ ack explicit, MaxAckPending = the pool's
                                                 │ in-flight bound, AckWait > a slow write
    event loop (nats-py's tasks; no thread)      ▼
    task ingest[<id>].fetch  fetch(batch = room in the inbox) ──▶ inbox (deque) ─▶ batch loop
    task ingest[<id>].progress  every AckWait/3: +WPI (in progress) for messages held longer
    acknowledge(ledger.release) ──▶ +ACK of each released delivery (after InfluxDB's 204)
    publish()  ──▶ dead-letter record: JetStream publish to the dead-letter stream, retried
                   until its PubAck (task ingest[<id>].deadletter); acknowledge() waits for
                   every such store started before it, so a refused message is acked only
                   once its record is stored (replicated). No stream configured: a core NATS
                   notification, best effort, as in the single-node profile.

Why a consumer on ``$MQTT_msgs`` and not a stream of our own: the MQTT gateway sends the
PUBACK once the message is stored in ``$MQTT_msgs`` (replicated); a user stream capturing
``sc.v1.>`` is filled after that, so a node dying in between loses the message for it.

``$MQTT_msgs`` has interest retention: a message is kept only for the consumers that exist
when it arrives, and removed once each acknowledged it. So the durable consumer is created
(or verified) at start, before any gateway's telemetry may be kept for it, and is never
deleted by a worker. A consumer whose filter, ack policy, AckWait or MaxAckPending differs
from the configuration stops the worker with :class:`BrokerError` naming the field.

Acks: each delivery gets its own ledger id (``mid``, a counter). JetStream acks are not tied
to a connection: an ack sent after a reconnect still counts, and a delivery whose AckWait ran
out is delivered again (a new ``mid``, ``dup`` set); writing it twice is harmless (InfluxDB
points are identified by measurement, tags and device time). ``epoch`` is constant.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import api as js_api

from foundation import Backoff, BrokerSetupError
from foundation.mqtt import Message
from ingest._config import IngestConfig
from ingest._dlq_stream import DeadLetterStream
from ingest._errors import BrokerError, ConfigError
from ingest._inbox import Inbox
from ingest._metrics import IngestMetrics
from telemetry import (
    MQTT_STREAM_PREFIX,
    TopicError,
    TopicKind,
    Topics,
    mqtt_to_nats_subject,
    nats_subject_to_mqtt_topic,
)

__all__ = ["JetStreamSource", "consumer_config"]

log = logging.getLogger("ingest")

_EPOCH: Final = 1
_CONNECT_TIMEOUT: Final = 30.0
_FETCH_WAIT_S: Final = 1.0


def consumer_config(config: IngestConfig) -> js_api.ConsumerConfig:
    """The durable consumer the pool shares, as the configuration asks for it."""
    js = config.jetstream
    subject = mqtt_to_nats_subject(
        Topics(config.mqtt.topic_root).all_gateways(TopicKind.TELEMETRY), filter_=True
    )
    return js_api.ConsumerConfig(
        durable_name=js.durable,
        description="smartcity ingest: telemetry from the MQTT gateway",
        deliver_policy=js_api.DeliverPolicy.ALL,
        ack_policy=js_api.AckPolicy.EXPLICIT,
        ack_wait=js.ack_wait,
        max_deliver=-1,  # never give a message up: a dead letter is ours to decide
        filter_subject=MQTT_STREAM_PREFIX + subject,
        max_ack_pending=js.max_ack_pending,
        num_replicas=js.replicas,
    )


def _mismatch(want: js_api.ConsumerConfig, have: js_api.ConsumerConfig) -> list[str]:
    fields = ["filter_subject", "ack_policy", "max_ack_pending", "deliver_policy"]
    out = [
        f"{f}: {getattr(have, f)!r} (configured {getattr(want, f)!r})"
        for f in fields
        if getattr(want, f) != getattr(have, f)
    ]
    if have.ack_wait is None or abs(have.ack_wait - (want.ack_wait or 0)) > 0.001:
        out.append(f"ack_wait: {have.ack_wait!r} s (configured {want.ack_wait!r} s)")
    if have.max_deliver not in (-1, None):
        out.append(f"max_deliver: {have.max_deliver} (configured unlimited)")
    return out


class JetStreamSource(Inbox):
    """Messages of the durable consumer, taken and acknowledged like the MQTT session's.

    :meth:`connect` (returns once the consumer is created or verified and bound), then the
    worker takes from :attr:`inbox`, acknowledges with :meth:`acknowledge`, publishes
    notifications with :meth:`publish`, and :meth:`close`. :meth:`stop_accepting` is safe
    from any thread.
    """

    def __init__(self, config: IngestConfig, *, metrics: IngestMetrics) -> None:
        self._config = config
        self._js_config = config.jetstream
        self._metrics = metrics
        self._worker = config.mqtt.client_id
        self._name = f"ingest[{self._worker}]"
        self._want = consumer_config(config)
        try:
            self._ssl = (
                None
                if self._js_config.tls is None
                else self._js_config.tls.ssl_context("jetstream.tls.")
            )
            self._password = self._js_config.read_password("jetstream.password_file")
        except BrokerSetupError as exc:
            raise ConfigError(str(exc)) from exc
        self._backoff = Backoff(
            initial=float(config.mqtt.reconnect_min_delay),
            maximum=float(max(config.mqtt.reconnect_min_delay, config.mqtt.reconnect_max_delay)),
        )
        r = config.window
        super().__init__(r)
        #: Deliveries handed over and not acknowledged yet: mid -> (NATS message, since).
        self._held: dict[int, tuple[Msg, float]] = {}
        self._mids = itertools.count(1)
        self._accepting = True
        self._nc: NatsClient | None = None
        self._tasks: list[asyncio.Task[None]] = []
        #: Notifications being handed to the client (awaited at close, like the loops).
        self._notifying: set[asyncio.Task[None]] = set()
        self._undelivered = 0
        #: The dead-letter stream (``jetstream.deadletters``; ``None``: notifications only).
        self._dlq = (
            DeadLetterStream(config, metrics=metrics, backoff=self._backoff, name=self._name)
            if config.jetstream.deadletters.stream is not None
            else None
        )

    @property
    def connected(self) -> bool:
        nc = self._nc
        return nc is not None and nc.is_connected

    # -- lifecycle ------------------------------------------------------------------------
    async def connect(self) -> None:
        """Connect to the cluster, create or verify the durable consumer, start fetching.

        :class:`BrokerError` when no server answers within 30 s, the credentials are
        refused, the stream is missing (no MQTT client ever connected to the account) or the
        consumer differs from the configuration.
        """
        js_cfg = self._js_config
        options: dict[str, Any] = {
            "servers": list(js_cfg.servers),
            "name": self._name,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": float(self._config.mqtt.reconnect_min_delay),
            "connect_timeout": 5,
            "allow_reconnect": True,
            "disconnected_cb": self._on_disconnect,
            "reconnected_cb": self._on_reconnect,
            "error_cb": self._on_error,
        }
        if js_cfg.username is not None:
            options["user"] = js_cfg.username
            options["password"] = self._password or ""
        if self._ssl is not None:
            options["tls"] = self._ssl
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT):
                nc = await nats.connect(**options)
        except TimeoutError as exc:
            raise BrokerError(
                f"no NATS server of {list(js_cfg.servers)} answered within {_CONNECT_TIMEOUT:.0f}s"
            ) from exc
        except (OSError, nats.errors.Error) as exc:
            raise BrokerError(f"cannot connect to {list(js_cfg.servers)}: {exc}") from exc
        self._nc = nc
        try:
            await self._ensure_consumer(nc)
            if self._dlq is not None:
                await self._dlq.ensure(nc)
            psub = await nc.jetstream().pull_subscribe_bind(
                durable=js_cfg.durable, stream=js_cfg.stream
            )
        except BaseException:
            await self.close()
            raise
        self._tasks = [
            asyncio.create_task(self._fetch(psub), name=f"{self._name}.fetch"),
            asyncio.create_task(self._progress(), name=f"{self._name}.progress"),
        ]
        self._metrics.connected.set(1)
        log.info(
            "bound to the JetStream consumer",
            extra={"worker": self._worker, "stream": js_cfg.stream, "durable": js_cfg.durable,
                   "filter": self._want.filter_subject, "server": nc.connected_url.netloc
                   if nc.connected_url else None},
        )

    async def _ensure_consumer(self, nc: NatsClient) -> None:
        js_cfg, want = self._js_config, self._want
        jsm = nc.jsm()
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT):
                while True:
                    try:
                        info = await jsm.consumer_info(js_cfg.stream, js_cfg.durable)
                        break
                    except nats.js.errors.NotFoundError as exc:
                        if not js_cfg.create:
                            raise BrokerError(
                                f"consumer {js_cfg.durable!r} of {js_cfg.stream!r} does not "
                                "exist (jetstream.create is off)"
                            ) from exc
                        if getattr(exc, "err_code", None) == 10059:  # stream not found
                            raise BrokerError(
                                f"stream {js_cfg.stream!r} does not exist: is MQTT enabled on "
                                "the cluster, and has an MQTT client of this account connected?"
                            ) from exc
                        info = await jsm.add_consumer(js_cfg.stream, want)
                        log.info(
                            "created the JetStream consumer",
                            extra={"durable": js_cfg.durable, "filter": want.filter_subject},
                        )
                        break
                    except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError):
                        await asyncio.sleep(0.5)  # a leader election: ask again
        except TimeoutError as exc:
            raise BrokerError(
                f"JetStream did not answer for consumer {js_cfg.durable!r} within "
                f"{_CONNECT_TIMEOUT:.0f}s"
            ) from exc
        except nats.js.errors.Error as exc:
            raise BrokerError(f"JetStream refused consumer {js_cfg.durable!r}: {exc}") from exc
        wrong = _mismatch(want, info.config)
        if wrong:
            raise BrokerError(
                f"consumer {js_cfg.durable!r} of {js_cfg.stream!r} differs from the "
                f"configuration: {'; '.join(wrong)} (change the configuration, or delete the "
                "consumer while no gateway publishes)"
            )

    async def close(self) -> None:
        """Stop fetching; drain the connection (acks sent so far are flushed) and close."""
        self._accepting = False
        self._wake.set()
        self._room.set()
        tasks, self._tasks = [*self._tasks, *self._notifying], []
        if self._dlq is not None:
            await self._dlq.close()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(nats.errors.Error, OSError, TimeoutError):
                async with asyncio.timeout(5.0):
                    await nc.flush()
            with contextlib.suppress(nats.errors.Error, OSError):
                await nc.close()
        self._held.clear()
        self._metrics.connected.set(0)

    def stop_accepting(self) -> None:
        """Take no more messages (the fetched ones not taken are redelivered after AckWait).
        Safe from any thread: only a flag."""
        self._accepting = False

    # -- taking messages ------------------------------------------------------------------
    async def _fetch(self, psub: Any) -> None:
        attempt = 0
        while self._taking():
            room = self._high_water - len(self.inbox)
            if room <= 0:
                await self._wait_for_room()
                continue
            try:
                msgs = await psub.fetch(batch=room, timeout=_FETCH_WAIT_S)
            except nats.errors.TimeoutError:
                attempt = 0
                continue  # nothing to fetch now
            except (nats.errors.Error, OSError) as exc:
                delay = self._backoff.delay(attempt)
                attempt += 1
                log.warning(
                    "JetStream fetch failed; retrying",
                    extra={"worker": self._worker, "error": str(exc) or type(exc).__name__,
                           "retry_in_s": delay},
                )
                await asyncio.sleep(delay)
                continue
            attempt = 0
            now = time.monotonic()
            for m in msgs:
                if not self._taking():
                    return  # the rest is redelivered after AckWait
                self._hand_over(m, now)

    def _taking(self) -> bool:
        return self._accepting

    def _hand_over(self, m: Msg, now: float) -> None:
        try:
            topic = nats_subject_to_mqtt_topic(m.subject)
        except TopicError:
            topic = m.subject  # refused by the decoder as a foreign topic, dead-lettered
        try:
            delivered = m.metadata.num_delivered
        except (nats.errors.Error, ValueError, IndexError):
            delivered = 1
        mid = next(self._mids)
        self._held[mid] = (m, now)
        self._put(
            Message(
                topic=topic, payload=m.data, qos=1, retain=False, dup=delivered > 1,
                mid=mid, epoch=_EPOCH, properties=None, conn=None,
            )
        )

    async def _progress(self) -> None:
        """Every AckWait/3, mark deliveries held longer than that as in progress (InfluxDB
        retrying, a full batch waiting): JetStream restarts their AckWait instead of
        delivering them to another worker meanwhile."""
        every = self._js_config.ack_wait / 3
        while True:
            await asyncio.sleep(every)
            cutoff = time.monotonic() - every
            for m, since in list(self._held.values()):
                if since <= cutoff:
                    with contextlib.suppress(nats.errors.Error, OSError):
                        await m.in_progress()

    # -- acks and publishing --------------------------------------------------------------
    async def acknowledge(self, release: Callable[[int], Iterable[tuple[int, int]]]) -> None:
        """Acknowledge each delivery ``release(epoch)`` returns (their points are stored).
        An ack that cannot be sent now is not retried: JetStream redelivers the message
        after AckWait, and writing it again is harmless."""
        if self._dlq is not None and not await self._dlq.settled():
            return  # a record was not stored: its message must not be acked (redelivered)
        held = self._held
        for mid, _qos in release(_EPOCH):
            entry = held.pop(mid, None)
            if entry is None:
                continue
            try:
                await entry[0].ack()
            except (nats.errors.Error, OSError) as exc:
                log.warning(
                    "JetStream ack not sent; the message will be delivered again",
                    extra={"worker": self._worker, "error": str(exc) or type(exc).__name__},
                )

    def publish(self, topic: str, payload: bytes) -> None:
        """Store a dead-letter record in the dead-letter stream: a task publishes it until
        JetStream confirms it stored (PubAck), and :meth:`acknowledge` waits for it (MQTT
        subscribers of ``topic`` get it too, at QoS 0). Without a stream: a core NATS
        notification, best effort, holding no ack; :class:`BrokerError` when it cannot be
        sent now."""
        if self._dlq is not None:
            self._dlq.store(self._nc, payload)
            return
        nc = self._nc
        if nc is None or not nc.is_connected:
            self._metrics.notifications_undelivered.labels("connection_lost").inc()
            raise BrokerError(f"not published to {topic}: not connected")
        try:
            subject = mqtt_to_nats_subject(topic)
        except TopicError as exc:
            raise BrokerError(f"not published to {topic}: {exc}") from exc
        task = asyncio.get_running_loop().create_task(
            nc.publish(subject, payload), name=f"{self._name}.notify"
        )
        self._notifying.add(task)
        task.add_done_callback(self._published)

    def _published(self, task: asyncio.Task[None]) -> None:
        self._notifying.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        self._undelivered += 1
        self._metrics.notifications_undelivered.labels("connection_lost").inc()

    # -- nats-py's callbacks --------------------------------------------------------------
    async def _on_disconnect(self) -> None:
        self._metrics.connected.set(0)
        if self._accepting:
            log.warning("disconnected from NATS; reconnecting", extra={"worker": self._worker})

    async def _on_reconnect(self) -> None:
        self._metrics.connected.set(1)
        nc = self._nc
        log.info(
            "reconnected to NATS",
            extra={"worker": self._worker,
                   "server": nc.connected_url.netloc if nc and nc.connected_url else None},
        )

    async def _on_error(self, exc: Exception) -> None:
        log.warning("NATS client error", extra={"worker": self._worker, "error": str(exc)})
