"""The ingest worker: MQTT shared subscription in, InfluxDB line protocol out, acks last.

::

    paho network thread                     asyncio thread (the worker's event loop)
    ───────────────────                     ─────────────────────────────────────────
    on_message ─▶ inbox (deque, bounded  ─▶ batch loop: decode (telemetry contract),
                  by Receive Maximum)         dead-letter refusals, encode line protocol,
                  wake the loop if idle       group into batches (size / age / window)
                                                 │ at most max_concurrent_writes
                                                 ▼
                                            write task: POST /write, retry 5xx/429/timeouts
                                              with capped jittered backoff; on 400 bisect,
                                              dead-letter the refused lines, keep the rest
                                                 │ 204
                                                 ▼
    PUBACK  ◀──── client.ack(mid) ◀──────── ack ledger: acks in receive order, only for
                                              messages whose points InfluxDB confirmed (or
                                              whose dead-letter record the broker confirmed)

Backpressure is the broker's: the worker announces Receive Maximum R in CONNECT, so the broker
never has more than R unacknowledged messages in flight to it. While InfluxDB is down nothing
is acknowledged, the broker stops sending and keeps the rest in the session queue; when
InfluxDB answers again the writes succeed, acks flow, and the broker resumes.

A connection loss invalidates every unacknowledged message (the broker redelivers them on the
next connection): acks are tagged with a connection epoch and stale ones are never sent.
Rewriting a redelivered message is harmless because InfluxDB points are identified by
measurement, tag set and device timestamp.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from foundation import BrokerSetupError, configure_client
from ingest._bookkeeping import GatewayBook, bookkeeping_line
from ingest._config import IngestConfig
from ingest._deadletter import DeadLetter, RejectedItem, encode_deadletter, payload_field
from ingest._errors import (
    BrokerError,
    ConfigError,
    IngestError,
    WriteRejected,
    WriteRetryable,
)
from ingest._metrics import IngestMetrics, MetricsServer
from ingest._sink import Sink, make_sink
from telemetry import (
    LineProtocolEncoder,
    PayloadError,
    TopicError,
    TopicKind,
    Topics,
    decode_batch_partial,
)

__all__ = ["IngestWorker", "WorkerStats", "WorkerThread"]

log = logging.getLogger("ingest")

_DEADLETTER_PAYLOAD_LIMIT: Final = 1024 * 1024
_MAX_ITEMS_PER_TURN: Final = 2000
_HOUR_NS: Final = 3600 * 10**9


@dataclass(slots=True)
class _Inbound:
    """A message as the paho thread hands it over."""

    epoch: int
    mid: int
    qos: int
    topic: str
    payload: bytes
    dup: bool


class _Entry:
    """A received message in the ack ledger."""

    __slots__ = ("done", "epoch", "mid", "parts", "qos", "readings")

    def __init__(self, epoch: int, mid: int, qos: int) -> None:
        self.epoch = epoch
        self.mid = mid
        self.qos = qos
        self.parts = 0
        self.readings = 0
        self.done = False


class _Chunk:
    """The line protocol of one message, waiting in a batch."""

    __slots__ = ("body", "entry", "gateway", "good_index", "payload", "readings", "seq", "topic")

    def __init__(
        self,
        entry: _Entry,
        body: bytes,
        readings: int,
        *,
        topic: str,
        payload: bytes,
        gateway: str,
        seq: int,
        good_index: Sequence[int] | None,
    ) -> None:
        self.entry = entry
        self.body = body
        self.readings = readings
        self.topic = topic
        self.payload = payload
        self.gateway = gateway
        self.seq = seq
        #: original reading index of each line when some readings were refused at decode
        self.good_index = good_index


class _Batch:
    __slots__ = ("chunks", "messages", "readings", "started")

    def __init__(self) -> None:
        self.chunks: list[_Chunk] = []
        self.readings = 0
        self.messages = 0
        self.started = time.monotonic()


@dataclass(frozen=True, slots=True)
class WorkerStats:
    """A snapshot of a worker's counters (also exported as Prometheus metrics)."""

    messages_received: int
    readings_received: int
    readings_written: int
    readings_rejected: int
    deadletters: int
    write_retries: int
    messages_in_flight: int
    readings_in_flight: int
    connected: bool


class IngestWorker:
    """One ingest worker. An async context manager; reusable only once.

    >>> async with IngestWorker(config) as worker:   # doctest: +SKIP
    ...     await worker.wait_stopped()               # until stop() (SIGTERM in the CLI)

    Entering prepares InfluxDB (database, retention policy), connects to the broker with a
    persistent session and subscribes; leaving stops taking messages, writes what was
    received (up to ``batch.drain_timeout``), acknowledges what was written and disconnects.
    """

    def __init__(self, config: IngestConfig, *, metrics: IngestMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else IngestMetrics()
        self.name = f"ingest[{config.mqtt.client_id}]"
        self._topics = Topics(config.mqtt.topic_root)
        self._subscription = self._topics.shared(config.mqtt.group, TopicKind.TELEMETRY)
        self._deadletter_topic = self._topics.deadletter(config.mqtt.deadletter_service)
        self._encoder = LineProtocolEncoder()
        self._book = GatewayBook()
        self._sink: Sink | None = None
        self._metrics_server: MetricsServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: mqtt.Client | None = None
        self._runner: asyncio.Task[None] | None = None
        self._entered = False
        # Shared with the paho thread (plain attributes and a deque: atomic under the GIL).
        self._inbox: collections.deque[_Inbound] = collections.deque()
        # Flow control of the network thread: past the high-water mark it stops reading the
        # socket until the batch loop has taken the inbox below the low-water mark.
        self._high_water = config.mqtt.receive_maximum
        self._low_water = max(1, config.mqtt.receive_maximum // 2)
        self._max_pause = config.mqtt.keepalive / 2
        self._room = threading.Event()
        self._accepting = True
        self._idle = False
        self._epoch = 0
        self._ack_lock = threading.Lock()
        # asyncio-thread state
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._stopped = asyncio.Event()
        self._connected = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._connect_error: BrokerError | None = None
        self._ledger: collections.deque[_Entry] = collections.deque()
        self._deadletters_waiting: dict[int, _Entry] = {}
        self._pending: _Batch | None = None
        self._write_slots = asyncio.Semaphore(config.batch.max_concurrent_writes)
        self._write_tasks: set[asyncio.Task[None]] = set()
        self._in_flight_readings = 0
        self._progress = asyncio.Event()
        self._flush_messages = max(
            1, config.mqtt.receive_maximum // (config.batch.max_concurrent_writes + 1)
        )
        self._counts = collections.Counter[str]()
        # Prometheus is brought up to date once per turn of the batch loop and per write
        # (:meth:`_sync_metrics`), not per message: labelled updates cost microseconds each.
        self._synced = collections.Counter[str]()
        self._dirty_gateways: set[str] = set()
        self._synced_gateways: dict[str, tuple[int, int]] = {}
        # Certificates and the password file are read once, before anything connects.
        self._tls_context: ssl.SSLContext | None = None
        try:
            if config.mqtt.tls is not None:
                self._tls_context = config.mqtt.tls.ssl_context("mqtt.tls.")
            self._password = config.mqtt.read_password("mqtt.password_file")
        except BrokerSetupError as exc:
            raise ConfigError(str(exc)) from exc

    # -- public ---------------------------------------------------------------------------
    @property
    def metrics_port(self) -> int | None:
        """The port ``/metrics`` is served on, once entered (``None`` if not served)."""
        return self._metrics_server.port if self._metrics_server else None

    def stop(self) -> None:
        """Ask the worker to stop gracefully; safe from any thread and from signal handlers."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        self._accepting = False
        self._room.set()
        with contextlib.suppress(RuntimeError):  # loop already closed: nothing to stop
            loop.call_soon_threadsafe(self._request_stop)

    async def wait_stopped(self) -> None:
        """Return when the worker has stopped (after :meth:`stop` or a fatal error)."""
        await self._stopped.wait()
        if self._runner is not None and self._runner.done() and not self._runner.cancelled():
            exc = self._runner.exception()
            if exc is not None:
                raise exc

    def stats(self) -> WorkerStats:
        c = self._counts
        return WorkerStats(
            messages_received=c["messages_received"],
            readings_received=c["readings_received"],
            readings_written=c["readings_written"],
            readings_rejected=c["readings_rejected"],
            deadletters=c["deadletters"],
            write_retries=c["write_retries"],
            messages_in_flight=len(self._ledger),
            readings_in_flight=self._in_flight_readings,
            connected=self._connected.is_set(),
        )

    def gateways(self) -> dict[str, tuple[int, int, int, float]]:
        """This worker's view per gateway: (last seq, gaps, replays, last seen Unix time)."""
        return self._book.snapshot()

    # -- lifecycle ------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        if self._entered:
            raise IngestError("an IngestWorker can be entered only once")
        self._entered = True
        self._loop = asyncio.get_running_loop()
        cfg = self.config
        self._sink = make_sink(cfg.influx, max_connections=cfg.batch.max_concurrent_writes)
        try:
            await self._sink.prepare()
            if cfg.metrics_port is not None:
                self._metrics_server = MetricsServer(
                    self.metrics.registry, host=cfg.metrics_host, port=cfg.metrics_port
                )
            await self._connect()
        except BaseException:
            await self._teardown()
            raise
        self._runner = asyncio.create_task(self._run(), name=f"{self.name}.run")
        log.info(
            "ingest worker started",
            extra={
                "worker": cfg.mqtt.client_id,
                "subscription": self._subscription,
                "influx": cfg.influx.url,
                "database": cfg.influx.database,
                "receive_maximum": cfg.mqtt.receive_maximum,
                "metrics_port": self.metrics_port,
            },
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        try:
            if self._runner is not None:
                await self._runner
        finally:
            await self._teardown()

    async def _teardown(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(self._disconnect, client)
        if self._metrics_server is not None:
            self._metrics_server.close()
            self._metrics_server = None
        if self._sink is not None:
            await self._sink.aclose()
            self._sink = None
        self._stopped.set()

    def _disconnect(self, client: mqtt.Client) -> None:
        # The acks queued before DISCONNECT are written first (one ordered out-queue).
        client.disconnect()
        client.loop_stop()

    def _request_stop(self) -> None:
        self._accepting = False
        self._room.set()
        self._stop.set()
        self._wake.set()
        self._progress.set()

    # -- MQTT -----------------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        m = self.config.mqtt
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=m.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        configure_client(client, m, context=self._tls_context, password=self._password)
        client.reconnect_delay_set(m.reconnect_min_delay, m.reconnect_max_delay)
        # Dead-letter records are rare; let them all be in flight rather than queue behind 20.
        client.max_inflight_messages_set(1000)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    def _connect_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.config.mqtt.session_expiry
        props.ReceiveMaximum = self.config.mqtt.receive_maximum
        return props

    async def _connect(self) -> None:
        timeout = 30.0
        m = self.config.mqtt
        client = self._client = self._make_client()
        try:
            client.connect_async(
                m.host,
                m.port,
                keepalive=m.keepalive,
                clean_start=False,
                properties=self._connect_properties(),
            )
            rc = client.loop_start()
        except (OSError, ValueError) as exc:
            raise BrokerError(f"cannot connect to {m.host}:{m.port}: {exc!r}") from exc
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise BrokerError(f"cannot start the MQTT loop: {mqtt.error_string(rc)}")
        try:
            async with asyncio.timeout(timeout):
                await self._subscribed.wait()
        except TimeoutError as exc:
            raise BrokerError(
                f"no subscription on {m.host}:{m.port} within {timeout}s"
                + (f": {self._connect_error}" if self._connect_error else "")
            ) from exc
        if self._connect_error is not None:
            raise self._connect_error

    def _call(self, fn: Any, *args: Any) -> None:
        """Run ``fn(*args)`` on the worker's loop from the paho thread."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # loop closing: nothing left to tell
                loop.call_soon_threadsafe(fn, *args)

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.error(
                "broker refused the connection",
                extra={"worker": self.config.mqtt.client_id, "reason": str(reason_code)},
            )
            if reason_code.value in (0x84, 0x85, 0x86, 0x87, 0x8C):  # version, id, auth
                self._call(self._fail_connect, BrokerError(f"broker refused: {reason_code}"))
            return
        client.subscribe(
            self._subscription, options=SubscribeOptions(qos=1, noLocal=False)
        )
        self.metrics.connected.set(1)
        self._call(self._connected.set)
        log.info(
            "connected to broker",
            extra={
                "worker": self.config.mqtt.client_id,
                "session_present": flags.session_present,
            },
        )

    def _fail_connect(self, error: BrokerError) -> None:
        self._connect_error = error
        self._subscribed.set()

    def _on_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: object,
        _mid: int,
        reason_codes: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        failed = [str(rc) for rc in reason_codes if rc.is_failure]
        if failed:
            self._call(
                self._fail_connect,
                BrokerError(f"subscription to {self._subscription} refused: {failed}"),
            )
            return
        self._call(self._subscribed.set)

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: object,
        _flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        # Every message not acknowledged so far will be redelivered: stop acking them.
        with self._ack_lock:
            self._epoch += 1
        self.metrics.connected.set(0)
        self._call(self._connected.clear)
        if self._accepting:
            log.warning(
                "disconnected from broker; paho reconnects",
                extra={"worker": self.config.mqtt.client_id, "reason": str(reason_code)},
            )

    def _on_message(self, client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        if not self._accepting:
            return  # shutting down: leave it unacknowledged, the broker keeps it
        inbox = self._inbox
        inbox.append(
            _Inbound(self._epoch, msg.mid, msg.qos, msg.topic, bytes(msg.payload), msg.dup)
        )
        if self._idle:
            self._idle = False
            self._call(self._wake.set)
        if len(inbox) >= self._high_water:
            # Receive Maximum alone is not a bound: mosquitto 2.0.11 overshoots it once acks
            # flow (docs/ingest.md). Stop reading the socket so TCP pushes back on the broker.
            # Never longer than keepalive/2, so the connection stays alive; our PUBACKs wait.
            self._room.clear()
            if len(inbox) >= self._high_water and self._accepting:
                self._room.wait(self._max_pause)

    def _on_publish(
        self,
        _client: mqtt.Client,
        _userdata: object,
        mid: int,
        _reason_code: ReasonCode,
        _properties: Properties,
    ) -> None:
        self._call(self._deadletter_acked, mid)

    # -- the batch loop ---------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                await self._batch_loop(tg)
                if self._write_tasks:
                    _, late = await asyncio.wait(
                        set(self._write_tasks), timeout=self.config.batch.drain_timeout
                    )
                    for task in late:
                        task.cancel()
                    if late:
                        log.warning(
                            "shutdown: writes not finished are left unacknowledged",
                            extra={
                                "worker": self.config.mqtt.client_id,
                                "messages": len(self._ledger),
                            },
                        )
        finally:
            self._publish_gauges()
            self._stopped.set()
            log.info(
                "ingest worker stopped",
                extra={"worker": self.config.mqtt.client_id, **self._counts},
            )

    async def _batch_loop(self, tg: asyncio.TaskGroup) -> None:
        inbox = self._inbox
        max_age = self.config.batch.max_age
        room = self._room
        max_in_flight = self.config.batch.max_in_flight_readings
        while True:
            if not room.is_set() and len(inbox) < self._low_water:
                room.set()
            if self._in_flight_readings >= max_in_flight and not self._stop.is_set():
                if self._pending is not None:
                    await self._flush(tg)
                    continue
                self._progress.clear()
                self._publish_gauges()
                await self._progress.wait()
                continue
            if not inbox:
                if self._stop.is_set():
                    if self._pending is not None:
                        await self._flush(tg)
                    return
                pending = self._pending
                timeout = None
                if pending is not None:
                    timeout = pending.started + max_age - time.monotonic()
                    if timeout <= 0:
                        await self._flush(tg)
                        continue
                self._wake.clear()
                self._idle = True
                if inbox:  # raced with the paho thread
                    self._idle = False
                    continue
                self._publish_gauges()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
                self._idle = False
                continue
            for _ in range(min(len(inbox), _MAX_ITEMS_PER_TURN)):
                chunk = self._process(inbox.popleft())
                if chunk is None:
                    continue
                batch = self._pending
                if batch is None:
                    batch = self._pending = _Batch()
                batch.chunks.append(chunk)
                batch.readings += chunk.readings
                batch.messages += 1
                if (
                    batch.readings >= self.config.batch.max_readings
                    or batch.messages >= self._flush_messages
                ):
                    await self._flush(tg)
            self._sync_metrics()
            pending = self._pending
            if pending is not None and time.monotonic() - pending.started >= max_age:
                await self._flush(tg)
            await asyncio.sleep(0)  # let write tasks see their answers

    def _process(self, item: _Inbound) -> _Chunk | None:
        """Validate one message; dead-letter what is refused; return its line protocol."""
        entry = _Entry(item.epoch, item.mid, item.qos)
        self._ledger.append(entry)
        counts = self._counts
        counts["messages_received"] += 1
        try:
            gateway, _kind = self._topics.parse(item.topic)
        except TopicError as exc:
            self._deadletter(entry, item, stage="decode", kind="topic", reason=exc.reason)
            return None
        try:
            decoded = decode_batch_partial(item.payload)
        except PayloadError as exc:
            self._deadletter(
                entry, item, stage="decode", kind=exc.kind, reason=exc.reason, path=exc.path,
                gateway=gateway,
            )
            return None
        batch = decoded.batch
        if batch.gateway != gateway:
            self._deadletter(
                entry, item, stage="decode", kind="invalid", path="$.gw", gateway=gateway,
                reason=f"gateway {batch.gateway!r} in the payload differs from the topic's",
            )
            return None
        rejected = decoded.rejected
        readings = batch.readings
        n_good = len(readings)
        counts["readings_received"] += n_good + len(rejected)
        now = time.time()
        self._book.observe(gateway, batch.seq, dup=item.dup, now=now)
        self._dirty_gateways.add(gateway)
        good_index: list[int] | None = None
        if rejected:
            counts["readings_rejected"] += len(rejected)
            self.metrics.readings_rejected.labels("decode").inc(len(rejected))
            self._deadletter(
                entry, item, stage="decode", kind="invalid_readings", gateway=gateway,
                seq=batch.seq,
                reason=f"{len(rejected)} of {n_good + len(rejected)} readings refused",
                rejected=[
                    RejectedItem(
                        index=r.index, reason=r.reason, path=r.path,
                        raw=r.raw.decode("utf-8", "replace"),
                    )
                    for r in rejected
                ],
            )
            bad = {r.index for r in rejected}
            good_index = [i for i in range(n_good + len(rejected)) if i not in bad]
        # With no valid reading there is no device time: the ingest clock's hour it is.
        newest = max(r.ts for r in readings) if n_good else time.time_ns() // _HOUR_NS * _HOUR_NS
        body = self._encoder.encode(gateway, readings) + bookkeeping_line(
            gateway=gateway, seq=batch.seq, newest_ts=newest, readings=n_good,
            rejected=len(rejected), dup=item.dup, worker=self.config.mqtt.client_id,
            received_ns=int(now * 1e9),
        ).encode()
        entry.parts += 1
        entry.readings = n_good
        self._in_flight_readings += n_good
        return _Chunk(
            entry, body, n_good, topic=item.topic, payload=item.payload, gateway=gateway,
            seq=batch.seq, good_index=good_index,
        )

    async def _flush(self, tg: asyncio.TaskGroup) -> None:
        batch, self._pending = self._pending, None
        if batch is None:
            return
        await self._write_slots.acquire()
        task = tg.create_task(self._write_batch(batch), name=f"{self.name}.write")
        self._write_tasks.add(task)
        task.add_done_callback(self._write_tasks.discard)

    # -- writing ----------------------------------------------------------------------------
    async def _write_batch(self, batch: _Batch) -> None:
        try:
            body = b"".join(c.body for c in batch.chunks)
            try:
                await self._write_retrying(body)
            except WriteRejected as exc:
                await self._resolve_rejected(batch.chunks, exc)
            else:
                for chunk in batch.chunks:
                    self._written(chunk)
            self.metrics.batch_latency.observe(time.monotonic() - batch.started)
            self._sync_metrics()
            self._advance_acks()
            self._publish_gauges()
        finally:
            self._write_slots.release()

    def _written(self, chunk: _Chunk) -> None:
        self._in_flight_readings -= chunk.readings
        self._progress.set()
        self._counts["readings_written"] += chunk.readings
        self._complete(chunk.entry)

    async def _write_retrying(self, body: bytes) -> None:
        """Write until InfluxDB answers 204; raise only :class:`WriteRejected`."""
        assert self._sink is not None
        retry = self.config.batch.retry
        delay = retry.initial_delay
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                await self._sink.write(body)
            except WriteRetryable as exc:
                attempt += 1
                reason = str(exc.status) if exc.status is not None else "connection"
                self._counts["write_retries"] += 1
                self.metrics.write_retries.labels(reason).inc()
                wait = delay / 2 + random.uniform(0, delay / 2)
                if exc.retry_after is not None:
                    wait = max(wait, min(exc.retry_after, 300.0))
                delay = min(retry.max_delay, delay * retry.multiplier)
                if attempt == 1 or attempt & (attempt - 1) == 0:  # 1, 2, 4, 8... attempts
                    log.warning(
                        "write failed, retrying",
                        extra={
                            "worker": self.config.mqtt.client_id,
                            "error": str(exc),
                            "attempt": attempt,
                            "wait_s": round(wait, 3),
                        },
                    )
                await asyncio.sleep(wait)
                continue
            self.metrics.writes.inc()
            self.metrics.write_duration.observe(time.monotonic() - started)
            if attempt:
                log.info(
                    "write succeeded after retries",
                    extra={"worker": self.config.mqtt.client_id, "attempts": attempt + 1},
                )
            return

    async def _resolve_rejected(self, chunks: list[_Chunk], exc: WriteRejected) -> None:
        """Bisect a refused body: write what InfluxDB takes, dead-letter what it refuses."""
        if len(chunks) == 1:
            await self._resolve_chunk(chunks[0], exc)
            return
        half = len(chunks) // 2
        for part in (chunks[:half], chunks[half:]):
            try:
                await self._write_retrying(b"".join(c.body for c in part))
            except WriteRejected as sub_exc:
                await self._resolve_rejected(part, sub_exc)
            else:
                for chunk in part:
                    self._written(chunk)

    async def _resolve_chunk(self, chunk: _Chunk, exc: WriteRejected) -> None:
        lines = chunk.body.splitlines(keepends=True)
        refused: list[tuple[int, str]] = []
        await self._bisect_lines(lines, list(range(len(lines))), exc, refused)
        n_bad_readings = sum(1 for i, _ in refused if i < len(lines) - 1)
        self._in_flight_readings -= chunk.readings
        self._progress.set()
        written = chunk.readings - n_bad_readings
        self._counts["readings_written"] += written
        self._counts["readings_rejected"] += n_bad_readings
        self.metrics.readings_rejected.labels("influx").inc(n_bad_readings)
        items = []
        for line_no, reason in refused:
            bookkeeping = line_no == len(lines) - 1
            index = -1 if bookkeeping else (
                chunk.good_index[line_no] if chunk.good_index else line_no
            )
            items.append(
                RejectedItem(
                    index=index, reason=reason, line=lines[line_no].decode("utf-8", "replace")
                )
            )
        log.warning(
            "InfluxDB refused points; dead-lettered",
            extra={
                "worker": self.config.mqtt.client_id,
                "gateway": chunk.gateway,
                "seq": chunk.seq,
                "refused": len(items),
                "error": exc.message,
            },
        )
        item = _Inbound(chunk.entry.epoch, chunk.entry.mid, chunk.entry.qos, chunk.topic,
                        chunk.payload, False)
        self._deadletter(
            chunk.entry, item, stage="influx", kind=f"influx_{exc.status}",
            reason=exc.message, gateway=chunk.gateway, seq=chunk.seq, rejected=items,
        )
        self._complete(chunk.entry)

    async def _bisect_lines(
        self,
        lines: list[bytes],
        numbers: list[int],
        exc: WriteRejected,
        refused: list[tuple[int, str]],
    ) -> None:
        if len(numbers) == 1:
            refused.append((numbers[0], exc.message))
            return
        half = len(numbers) // 2
        for part in (numbers[:half], numbers[half:]):
            try:
                await self._write_retrying(b"".join(lines[i] for i in part))
            except WriteRejected as sub_exc:
                await self._bisect_lines(lines, part, sub_exc, refused)

    # -- dead letters and acks ------------------------------------------------------------
    def _deadletter(
        self,
        entry: _Entry,
        item: _Inbound,
        *,
        stage: str,
        kind: str,
        reason: str,
        path: str | None = None,
        gateway: str | None = None,
        seq: int | None = None,
        rejected: list[RejectedItem] | None = None,
    ) -> None:
        text, encoding, truncated = payload_field(item.payload, _DEADLETTER_PAYLOAD_LIMIT)
        record = DeadLetter(
            service=self.config.mqtt.deadletter_service,
            worker=self.config.mqtt.client_id,
            stage=stage,
            kind=kind,
            reason=reason,
            path=path,
            topic=item.topic,
            gateway=gateway,
            seq=seq,
            received=time.time_ns(),
            payload=text,
            payload_encoding=encoding,
            payload_truncated=truncated,
            rejected=rejected,
        )
        self._counts["deadletters"] += 1
        self.metrics.messages_deadlettered.labels(kind).inc()
        log.info(
            "dead-lettered",
            extra={
                "worker": self.config.mqtt.client_id,
                "topic": item.topic,
                "kind": kind,
                "reason": reason,
                "path": path,
            },
        )
        assert self._client is not None
        info = self._client.publish(self._deadletter_topic, encode_deadletter(record), qos=1)
        entry.parts += 1
        # on_publish reaches this thread through call_soon_threadsafe, so it cannot run
        # before the mid is registered here.
        self._deadletters_waiting[info.mid] = entry

    def _deadletter_acked(self, mid: int) -> None:
        entry = self._deadletters_waiting.pop(mid, None)
        if entry is not None:
            self._complete(entry)
            self._advance_acks()

    def _complete(self, entry: _Entry) -> None:
        entry.parts -= 1
        if entry.parts <= 0:
            entry.done = True

    def _advance_acks(self) -> None:
        """Acknowledge finished messages in the order they were received (MQTT 4.6)."""
        ledger = self._ledger
        if not ledger or not ledger[0].done:
            return
        client = self._client
        with self._ack_lock:
            epoch = self._epoch
            while ledger and ledger[0].done:
                entry = ledger.popleft()
                if entry.qos and entry.epoch == epoch and client is not None:
                    client.ack(entry.mid, entry.qos)

    def _publish_gauges(self) -> None:
        self._sync_metrics()
        self.metrics.messages_in_flight.set(len(self._ledger))
        self.metrics.readings_in_flight.set(self._in_flight_readings)

    def _sync_metrics(self) -> None:
        """Bring the Prometheus counters and per-gateway series up to the worker's counts."""
        counts, synced, m = self._counts, self._synced, self.metrics
        for key, counter in (
            ("messages_received", m.messages_received),
            ("readings_received", m.readings_received),
            ("readings_written", m.readings_written),
        ):
            delta = counts[key] - synced[key]
            if delta:
                counter.inc(delta)
                synced[key] = counts[key]
        if not self._dirty_gateways:
            return
        book, seen = self._book, self._synced_gateways
        for gateway in self._dirty_gateways:
            last_seq, gaps, replays, last_seen = book.state(gateway)
            m.gateway_last_seq.labels(gateway).set(last_seq)
            m.gateway_last_seen.labels(gateway).set(last_seen)
            old_gaps, old_replays = seen.get(gateway, (0, 0))
            if gaps > old_gaps:
                m.gateway_gaps.labels(gateway).inc(gaps - old_gaps)
            if replays > old_replays:
                m.gateway_replays.labels(gateway).inc(replays - old_replays)
            seen[gateway] = (gaps, replays)
        self._dirty_gateways.clear()


class WorkerThread:
    """Runs an :class:`IngestWorker` on its own event loop in a background thread.

    For synchronous callers (the demo, tests)::

        with WorkerThread(config) as worker:   # returns once subscribed
            ...
        # leaving stops it gracefully (acks only what was written)
    """

    def __init__(self, config: IngestConfig, *, metrics: IngestMetrics | None = None) -> None:
        self.worker = IngestWorker(config, metrics=metrics)
        self._thread = threading.Thread(
            target=self._main, name=f"{self.worker.name}.thread", daemon=True
        )
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
            self._error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        async with self.worker:
            self._ready.set()
            await self.worker.wait_stopped()

    def start(self, timeout: float = 60.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise IngestError(f"worker did not start within {timeout}s")
        if self._error is not None:
            raise self._error

    def stop(self, timeout: float = 60.0) -> None:
        self.worker.stop()
        self._thread.join(timeout)
        if self._error is not None:
            raise self._error

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
