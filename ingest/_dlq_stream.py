"""The dead-letter stream of the ``jetstream`` source: records stored, replicated, before the
refused message is acknowledged.

::

    worker: DeadLetters.record ─▶ JetStreamSource.publish ─▶ store(record)
                                                  task ingest[<id>].deadletter:
                                                  JetStream publish to <root>.v1._sys.
                                                  deadletter.<service> (Nats-Msg-Id,
                                                  expected stream), retried with backoff
                                                  until the PubAck
    JetStreamSource.acknowledge ─▶ settled(): wait until no record is being stored
                                   ─▶ ledger.release ─▶ +ACK of the refused message

Past a gateway's dead-letter budget (``deadletters.per_gateway``, ``_dl_budget.py``) no record
reaches :meth:`DeadLetterStream.store`: ``DeadLetters.record`` counts the refusal and returns
before it publishes, so the stream holds at most ``burst + rate x t`` records of one gateway,
and the refused message is acknowledged without waiting for any store.

A record's message is released by the ledger only after the record was made (decode
refusals before the message is held, InfluxDB refusals before it is done), so waiting
until *no* store is running before releasing covers every released message. A store is
given up only when the worker closes; from then on no ack is sent (the messages come again
after AckWait). While the stream has no quorum the stores retry, the acks wait, and
MaxAckPending stops deliveries: the same backpressure as an InfluxDB outage.

Stream: limits retention (``max_bytes``, ``max_age_days``; the oldest go first), file
storage, as many replicas as the consumed stream (``$MQTT_msgs``) unless configured, a
two-minute duplicate window keyed by :func:`deadletter_msg_id` (a redelivered message
refused again by the same consumer is stored once). Created when missing, verified
otherwise; a stream whose subjects, replicas or retention differ stops the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any, Final

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import api as js_api

from foundation import Backoff
from ingest._config import IngestConfig
from ingest._errors import BrokerError
from ingest._metrics import IngestMetrics
from telemetry import Topics, mqtt_to_nats_subject

__all__ = ["DeadLetterStream", "deadletter_msg_id", "deadletter_subject"]

log = logging.getLogger("ingest")

_SETUP_TIMEOUT_S: Final = 30.0
_PUBLISH_TIMEOUT_S: Final = 5.0
_DUPLICATE_WINDOW_S: Final = 120.0


def deadletter_subject(config: IngestConfig) -> str:
    """The NATS subject of the dead-letter topic (the dead-letter stream's subject)."""
    topics = Topics(config.mqtt.topic_root)
    return mqtt_to_nats_subject(topics.deadletter(config.mqtt.deadletter_service))


def deadletter_msg_id(durable: str, record: bytes) -> str:
    """``Nats-Msg-Id`` of a dead-letter record: the same refusal (stage, kind) of the same
    message (topic, payload hash) by the same consumer has the same id."""
    try:
        r = json.loads(record)
        key = "\0".join(str(r.get(k)) for k in ("stage", "kind", "topic", "payload_sha256"))
    except (ValueError, AttributeError):
        key = hashlib.sha256(record).hexdigest()
    return f"{durable}-{hashlib.sha256(key.encode()).hexdigest()[:40]}"


async def _retrying(call: Callable[..., Any], *args: Any) -> Any:
    """``call(*args)``, asked again while JetStream elects a leader (bounded by the
    caller's timeout)."""
    while True:
        try:
            return await call(*args)
        except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError):
            await asyncio.sleep(0.5)


class DeadLetterStream:
    """Creates or verifies the stream (:meth:`ensure`), stores records (:meth:`store`),
    tells the acks when every record is stored (:meth:`settled`)."""

    def __init__(
        self, config: IngestConfig, *, metrics: IngestMetrics, backoff: Backoff, name: str
    ) -> None:
        dl = config.jetstream.deadletters
        assert dl.stream is not None
        self.stream = dl.stream
        self.subject = deadletter_subject(config)
        self._config = config
        self._metrics = metrics
        self._backoff = backoff
        self._name = name
        self._durable = config.jetstream.durable
        self._storing: set[asyncio.Task[None]] = set()
        #: A record's store was given up (at close, or no connection): no ack from now on.
        self._unstored = False

    async def ensure(self, nc: NatsClient) -> None:
        """Create the stream when missing (``create``), verify it otherwise;
        :class:`BrokerError` naming what differs or why it could not be done."""
        js_cfg = self._config.jetstream
        dl = js_cfg.deadletters
        jsm = nc.jsm()
        try:
            async with asyncio.timeout(_SETUP_TIMEOUT_S):
                replicas = dl.replicas
                if replicas is None:
                    source = await _retrying(jsm.stream_info, js_cfg.stream)
                    replicas = source.config.num_replicas or 1
                try:
                    info = await _retrying(jsm.stream_info, self.stream)
                except nats.js.errors.NotFoundError as exc:
                    if not dl.create:
                        raise BrokerError(
                            f"dead-letter stream {self.stream!r} does not exist "
                            "(jetstream.deadletters.create is off)"
                        ) from exc
                    info = await self._create(jsm, replicas)
        except TimeoutError as exc:
            raise BrokerError(
                f"JetStream did not answer for stream {self.stream!r} within "
                f"{_SETUP_TIMEOUT_S:.0f}s"
            ) from exc
        except nats.js.errors.Error as exc:
            raise BrokerError(f"JetStream refused stream {self.stream!r}: {exc}") from exc
        have = info.config
        wrong = []
        if self.subject not in (have.subjects or []):
            wrong.append(f"subjects: {have.subjects!r} (needs {self.subject!r})")
        if have.num_replicas != replicas:
            wrong.append(f"num_replicas: {have.num_replicas} (configured {replicas})")
        if have.retention != js_api.RetentionPolicy.LIMITS:
            wrong.append(f"retention: {have.retention!r} (needs limits)")
        if wrong:
            raise BrokerError(
                f"dead-letter stream {self.stream!r} differs from the configuration: "
                f"{'; '.join(wrong)}"
            )

    async def _create(self, jsm: Any, replicas: int) -> Any:
        dl = self._config.jetstream.deadletters
        want = js_api.StreamConfig(
            name=self.stream,
            description="smartcity ingest: dead-letter records",
            subjects=[self.subject],
            retention=js_api.RetentionPolicy.LIMITS,
            storage=js_api.StorageType.FILE,
            discard=js_api.DiscardPolicy.OLD,
            num_replicas=replicas,
            max_bytes=dl.max_bytes,
            max_age=dl.max_age_days * 86_400,
            duplicate_window=_DUPLICATE_WINDOW_S,
        )
        try:
            info = await _retrying(jsm.add_stream, want)
        except nats.js.errors.BadRequestError:  # created meanwhile by another worker
            return await _retrying(jsm.stream_info, self.stream)
        log.info("created the dead-letter stream",
                 extra={"stream": self.stream, "subject": self.subject, "replicas": replicas})
        return info

    # -- storing ----------------------------------------------------------------------------
    def store(self, nc: NatsClient | None, record: bytes) -> None:
        """Start storing ``record`` (a task, retried until the PubAck)."""
        if nc is None:
            self._unstored = True  # only before connect or after close: nothing is acked
            return
        task = asyncio.get_running_loop().create_task(
            self._store(nc, record), name=f"{self._name}.deadletter"
        )
        self._storing.add(task)
        task.add_done_callback(self._done)

    async def _store(self, nc: NatsClient, record: bytes) -> None:
        js = nc.jetstream()
        msg_id = deadletter_msg_id(self._durable, record)
        attempt = 0
        while True:
            try:
                await js.publish(
                    self.subject, record, timeout=_PUBLISH_TIMEOUT_S, stream=self.stream,
                    headers={"Nats-Msg-Id": msg_id},
                )
            except (nats.errors.Error, OSError, TimeoutError) as exc:
                delay = self._backoff.delay(attempt)
                attempt += 1
                self._metrics.deadletter_stream_retries.inc()
                log.warning(
                    "dead-letter record not stored yet; retrying (its message stays unacked)",
                    extra={"worker": self._name, "stream": self.stream,
                           "error": str(exc) or type(exc).__name__, "retry_in_s": delay},
                )
                await asyncio.sleep(delay)
                continue
            self._metrics.deadletters_streamed.inc()
            return

    def _done(self, task: asyncio.Task[None]) -> None:
        self._storing.discard(task)
        if task.cancelled() or task.exception() is not None:
            self._unstored = True

    async def settled(self) -> bool:
        """Wait until no record is being stored; whether every record so far was stored
        (``False`` only after a store was given up: then nothing may be acked)."""
        while self._storing:
            await asyncio.wait(set(self._storing))
        return not self._unstored

    async def close(self) -> None:
        """Give up the stores still running (their messages stay unacked)."""
        tasks = list(self._storing)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
