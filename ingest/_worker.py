"""The ingest worker: MQTT shared subscription in, InfluxDB line protocol out, acks last.

::

    one event loop (the MQTT session layer drives paho inside it; no network thread)
    ──────────────────────────────────────────────────────────────────────────────────
    session ─▶ inbox (deque, at most R    ─▶ batch loop: decode (telemetry contract),
               messages wait in all;          dead-letter refusals, encode line protocol,
               wakes the loop if idle)        group into batches (size / age / window)
                                                 │ at most max_concurrent_writes
                                                 ▼
                                            write task: POST /write, retry 5xx/429/timeouts
                                              with capped jittered backoff; on 400 bisect,
                                              dead-letter the refused lines, keep the rest
                                                 │ 204
                                                 ▼
    PUBACK  ◀──── Message.ack() ◀────────── ack ledger: acks in receive order, only for
                                              messages whose points InfluxDB confirmed (their
                                              dead-letter points included)

Backpressure is the broker's: the worker announces Receive Maximum R in CONNECT, so the broker
never has more than R unacknowledged messages in flight to it. While InfluxDB is down nothing
is acknowledged, the broker stops sending and keeps the rest in the session queue; when
InfluxDB answers again the writes succeed, acks flow, and the broker resumes.

A connection loss invalidates every unacknowledged message (the broker redelivers them on the
next connection): acks are tagged with a connection epoch and stale ones are never sent.
Rewriting a redelivered message is harmless because InfluxDB points are identified by
measurement, tag set and device timestamp.

This module only wires the parts, each with one job and its own tests:

============================  ==========================================================
``_session.MqttSession``      the broker side, on the shared layer (``foundation.mqtt``):
                              connect, subscribe, inbox, acks, publishing; no paho here
``_batcher.MessageDecoder``   message -> line-protocol chunk + refusals (pure)
``_batcher.Batching``         chunks -> write batches by size and age (pure)
``_writer.Writer``            a batch -> accepted parts / refused lines (retry, bisect)
``_ledger.AckLedger``         which messages may be acked, in receive order, which epoch
``_deadletter.DeadLetters``   dead-letter records: a point written like any other (acked
                              on 204), an MQTT notification (best effort)
``_dl_budget.DeadLetterBudget`` full records per gateway; past it a message refused whole
                              is acked in order with no write; one summary point per window
``_metrics.Tally``            the counts, synced to Prometheus per turn and per write
============================  ==========================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Self

from foundation import LoopLagMonitor
from ingest._batcher import Batch, Batching, Chunk, MessageDecoder
from ingest._bookkeeping import GatewayBook
from ingest._config import IngestConfig
from ingest._conflicts import RenamingWriter
from ingest._deadletter import DeadLetters, Refusal, internal_refusal
from ingest._dl_budget import DeadLetterBudget
from ingest._errors import IngestError
from ingest._jetstream import JetStreamSource
from ingest._ledger import AckLedger, Entry
from ingest._metrics import IngestMetrics, MetricsServer, Tally
from ingest._session import Inbound, MqttSession
from ingest._sink import Sink, make_sink
from ingest._writer import RefusedPart, Writer, backoff_for
from telemetry import TopicKind, Topics

__all__ = ["IngestWorker", "WorkerStats"]

log = logging.getLogger("ingest")

_MAX_ITEMS_PER_TURN: Final = 2000


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
    deadletters_suppressed: int = 0


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
        m, b = config.mqtt, config.batch
        self.name = f"ingest[{m.client_id}]"
        topics = Topics(m.topic_root)
        self._subscription = topics.shared(m.group, TopicKind.TELEMETRY)
        self._tally = Tally()
        self._book = GatewayBook()
        self._ledger = AckLedger()
        self._decoder = MessageDecoder(
            topics, worker=m.client_id, max_clock_skew=config.intake.max_clock_skew,
            max_series_per_gateway=config.intake.max_series_per_gateway,
        )
        self._batching = Batching(
            max_readings=b.max_readings,
            max_messages=max(1, config.window // (b.max_concurrent_writes + 1)),
            max_age=b.max_age,
        )
        # The source of messages: the MQTT shared subscription, or (cluster profile) the
        # durable JetStream consumer behind the same calls (``_jetstream.py``).
        self._session: MqttSession | JetStreamSource = (
            JetStreamSource(config, metrics=self.metrics)
            if config.source == "jetstream"
            else MqttSession(m, subscription=self._subscription, metrics=self.metrics)
        )
        self._dl_budget = DeadLetterBudget.configured(config.deadletters, worker=m.client_id)
        self._deadletters = DeadLetters(
            topic=topics.deadletter(m.deadletter_service), service=m.deadletter_service,
            worker=m.client_id, publish=self._session.publish, metrics=self.metrics,
            tally=self._tally, budget=self._dl_budget,
        )
        # Messages refused whole past their gateway's budget: acked by a task of their own.
        self._bare_acks = False
        self._ack_task: asyncio.Task[None] | None = None
        self._sink: Sink | None = None
        self._writer: Writer | None = None
        self._metrics_server: MetricsServer | None = None
        self._lag = LoopLagMonitor(self.metrics.loop_lag.observe)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: asyncio.Task[None] | None = None
        self._entered = False
        self._stop = asyncio.Event()
        self._stopped = asyncio.Event()
        self._progress = asyncio.Event()
        self._write_slots = asyncio.Semaphore(b.max_concurrent_writes)
        self._write_tasks: set[asyncio.Task[None]] = set()
        self._in_flight_readings = 0

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
        self._session.stop_accepting()
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
        t = self._tally
        return WorkerStats(
            messages_received=t.messages_received,
            readings_received=t.readings_received,
            readings_written=t.readings_written,
            readings_rejected=t.readings_rejected,
            deadletters=t.deadletters,
            deadletters_suppressed=t.deadletters_suppressed,
            write_retries=t.write_retries,
            messages_in_flight=len(self._ledger),
            readings_in_flight=self._in_flight_readings,
            connected=self._session.connected,
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
        self._writer = RenamingWriter(  # lines refused for a field type conflict renamed
            self._sink, backoff_for(cfg.batch.retry), metrics=self.metrics, tally=self._tally,
            worker=cfg.mqtt.client_id,
        )
        try:
            await self._sink.prepare()
            if cfg.metrics_port is not None:
                self._metrics_server = MetricsServer(
                    self.metrics.registry, host=cfg.metrics_host, port=cfg.metrics_port
                )
            await self._session.connect()
        except BaseException:
            await self._teardown()
            raise
        self._runner = asyncio.create_task(self._run(), name=f"{self.name}.run")
        self._lag.start()
        log.info(
            "ingest worker started",
            extra={
                "worker": cfg.mqtt.client_id,
                "subscription": self._subscription,
                "influx": cfg.influx.url,
                "database": cfg.influx.database,
                "source": cfg.source,
                "window": cfg.window,
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
        await self._lag.aclose()
        await self._session.close()
        if self._metrics_server is not None:
            self._metrics_server.close()
            self._metrics_server = None
        if self._sink is not None:
            await self._sink.aclose()
            self._sink = None
        self._stopped.set()

    def _request_stop(self) -> None:
        self._session.stop_accepting()
        self._stop.set()
        self._session.wake()
        self._progress.set()

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
                extra={"worker": self.config.mqtt.client_id, **self._tally.as_dict()},
            )

    async def _batch_loop(self, tg: asyncio.TaskGroup) -> None:
        session, batching = self._session, self._batching
        inbox = session.inbox
        max_in_flight = self.config.batch.max_in_flight_readings
        budget = self._dl_budget
        while True:
            session.make_room()
            if self._in_flight_readings >= max_in_flight and not self._stop.is_set():
                if batching.pending is not None:
                    await self._flush(tg)
                    continue
                self._progress.clear()
                self._publish_gauges()
                await self._progress.wait()
                continue
            if not inbox:
                if self._stop.is_set():
                    await self._over_budget(tg, final=True)
                    await self._flush(tg)
                    return
                now = time.monotonic()
                timeout = batching.due_in(now)
                if budget is not None and budget.next_due != math.inf:  # a summary to write
                    timeout = min(budget.next_due - now, math.inf if timeout is None else timeout)
                if timeout is not None and timeout <= 0:
                    await self._over_budget(tg)
                    await self._flush(tg)
                    continue
                self._publish_gauges()
                await session.wait_for_messages(timeout)
                continue
            for _ in range(min(len(inbox), _MAX_ITEMS_PER_TURN)):
                if self._take(inbox.popleft()):
                    await self._flush(tg)
            self._tally.sync(self.metrics, self._book)
            now = time.monotonic()
            if self._bare_acks or (budget is not None and budget.next_due <= now):
                await self._over_budget(tg)
            due = batching.due_in(now)
            if due is not None and due <= 0:
                await self._flush(tg)
            await asyncio.sleep(0)  # let write tasks see their answers

    def _take(self, item: Inbound) -> bool:
        """Account for one message, batch its line protocol and the dead-letter point of
        what is refused (acked once InfluxDB stored both); return whether the pending batch
        is full. An unexpected exception dead-letters the message, never stops the worker."""
        entry = self._ledger.receive(item.epoch, item.mid, item.qos)
        self._tally.messages_received += 1
        try:
            chunk = self._chunk(item)
        except Exception as exc:  # noqa: BLE001 - one message never stops a worker (design.md)
            refusal = internal_refusal(exc)
            line = self._deadletters.record(item.topic, item.payload, refusal)
            chunk = None if line is None else Chunk.for_deadletter(
                line, topic=item.topic, payload=item.payload, refusal=refusal,
            )
        if chunk is None:  # refused whole past its gateway's budget: done, nothing to write
            self._ledger.hold(entry)
            self._ledger.complete(entry)
            self._bare_acks = True
            return False
        self._ledger.hold(entry)
        self._in_flight_readings += chunk.readings
        return self._batching.add(chunk, entry)

    def _chunk(self, item: Inbound) -> Chunk | None:
        tally = self._tally
        now = time.time()
        chunk, refusal = self._decoder.decode(item.topic, item.payload, dup=item.dup, now=now)
        if chunk is not None:
            tally.readings_received += chunk.readings + chunk.rejected
            self._book.observe(chunk.gateway, chunk.seq, dup=item.dup, now=now)
            tally.dirty_gateways.add(chunk.gateway)
            if chunk.rejected:
                tally.readings_rejected += chunk.rejected
                self.metrics.readings_rejected.labels("decode").inc(chunk.rejected)
                for code, n in chunk.refused_codes.items():
                    self.metrics.readings_refused.labels(code).inc(n)
        if refusal is None:
            assert chunk is not None
            return chunk
        line = self._deadletters.record(item.topic, item.payload, refusal)
        if line is None:  # past the gateway's budget: the good readings only, if any
            return chunk
        if chunk is None:
            return Chunk.for_deadletter(
                line, topic=item.topic, payload=item.payload, refusal=refusal
            )
        chunk.add_deadletter(line)
        return chunk

    async def _over_budget(self, tg: asyncio.TaskGroup, *, final: bool = False) -> None:
        """Acknowledge messages refused past their gateway's budget (no write will), and
        batch the summary points due (every open one when ``final``). Each summary has a
        ledger entry of its own with QoS 0: written in order, acked to nobody."""
        if self._bare_acks and (self._ack_task is None or self._ack_task.done()):
            self._ack_task = task = tg.create_task(self._ack_bare(), name=f"{self.name}.ack")
            self._write_tasks.add(task)  # drained (or given up) at shutdown like the writes
            task.add_done_callback(self._write_tasks.discard)
        for refusal, line in self._deadletters.summaries(force=final):
            entry = self._ledger.receive(0, 0, 0)
            self._ledger.hold(entry)
            chunk = Chunk.for_deadletter(line, topic="", payload=b"", refusal=refusal)
            if self._batching.add(chunk, entry):
                await self._flush(tg)

    async def _ack_bare(self) -> None:
        while self._bare_acks:
            self._bare_acks = False
            await self._advance_acks()

    async def _flush(self, tg: asyncio.TaskGroup) -> None:
        batch = self._batching.take()
        if batch is None:
            return
        await self._write_slots.acquire()
        task = tg.create_task(self._write_batch(batch), name=f"{self.name}.write")
        self._write_tasks.add(task)
        task.add_done_callback(self._write_tasks.discard)

    # -- the write transaction's verdict ----------------------------------------------------
    async def _write_batch(self, batch: Batch) -> None:
        try:
            assert self._writer is not None
            result = await self._writer.write([c.body for c in batch.chunks])
            for i in result.accepted:
                self._written(batch.chunks[i], batch.entries[i])
            late: list[tuple[Entry, bytes | None]] = []
            for refused in result.refused:
                chunk = batch.chunks[refused.index]
                self._in_flight_readings -= chunk.readings
                self._progress.set()
                try:
                    line = self._refused(chunk, refused)
                except Exception as exc:  # noqa: BLE001 - one message never stops a worker
                    line = self._deadletters.record(
                        chunk.topic, chunk.payload,
                        internal_refusal(exc, gateway=chunk.gateway or None),
                    )
                late.append((batch.entries[refused.index], line))
            await self._store_deadletters(late)
            self.metrics.batch_latency.observe(time.monotonic() - batch.started)
            self._tally.sync(self.metrics, self._book)
            await self._advance_acks()
            self._publish_gauges()
        finally:
            self._write_slots.release()

    def _written(self, chunk: Chunk, entry: Entry) -> None:
        self._in_flight_readings -= chunk.readings
        self._progress.set()
        self._tally.readings_written += chunk.readings
        self._ledger.complete(entry)

    def _refused(self, chunk: Chunk, refused: RefusedPart) -> bytes | None:
        """InfluxDB refused lines of this message: count them; return the dead-letter point
        to store (``None``: nothing left to dead-letter)."""
        n_bad, items, lost = chunk.classify(refused)
        if lost:
            self._deadletter_unstored(chunk.lines[-1], refused.message)
        self._tally.readings_written += chunk.readings - n_bad
        self._tally.readings_rejected += n_bad
        self.metrics.readings_rejected.labels("influx").inc(n_bad)
        if not items:
            return None
        line = self._deadletters.record(chunk.topic, chunk.payload, Refusal(
            stage="influx", kind=f"influx_{refused.status}", reason=refused.message,
            gateway=chunk.gateway or None, seq=chunk.seq if chunk.seq >= 0 else None,
            rejected=items,
        ))
        if line is not None:  # past the gateway's budget: counted, not logged per message
            log.warning("InfluxDB refused points; dead-lettered", extra={
                "worker": self.config.mqtt.client_id, "gateway": chunk.gateway,
                "seq": chunk.seq, "refused": len(items), "error": refused.message})
        return line

    async def _store_deadletters(self, late: list[tuple[Entry, bytes | None]]) -> None:
        """Write the dead-letter points of refused messages; then each message is done."""
        lines = [(entry, line) for entry, line in late if line is not None]
        if lines:
            assert self._writer is not None
            result = await self._writer.write([line + b"\n" for _, line in lines])
            for refused in result.refused:
                self._deadletter_unstored(lines[refused.index][1], refused.message)
        for entry, _ in late:
            self._ledger.complete(entry)

    def _deadletter_unstored(self, line: bytes, error: str) -> None:
        """InfluxDB refused a dead-letter point: only the log and the notification keep it."""
        self.metrics.deadletters_unstored.inc()
        log.error("InfluxDB refused a dead-letter point", extra={
            "worker": self.config.mqtt.client_id, "error": error,
            "line": line[:2048].decode("utf-8", "replace")})

    # -- acks -------------------------------------------------------------------------------
    async def _advance_acks(self) -> None:
        """Acknowledge finished messages in the order they were received (MQTT 4.6): the
        ledger says which, the session sends them (never on a lost connection)."""
        if self._ledger.ready:
            await self._session.acknowledge(self._ledger.release)

    def _publish_gauges(self) -> None:
        self._tally.sync(self.metrics, self._book)
        self.metrics.messages_in_flight.set(len(self._ledger))
        self.metrics.readings_in_flight.set(self._in_flight_readings)
