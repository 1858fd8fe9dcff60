"""From MQTT messages to write batches: pure functions and plain objects, no I/O.

::

    (topic, payload, dup) ──decode──▶ Chunk: the readings' line protocol + one bookkeeping line
                             │          (ingest_batch, always the last line)
                             └───────▶ Refusal: the whole message, or the refused readings
                                         (both may come out: one bad reading never drops
                                         the good ones of its message)

    Chunk, Chunk, ... ──Batching──▶ Batch: flushed at max_readings readings, or max_messages
                                    messages, or when its first message is max_age old

A chunk is never split across batches: a message's points and its bookkeeping point go to
InfluxDB in one request, so the bookkeeping point exists exactly when the readings do.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Final

from ingest._deadletter import Refusal, RejectedItem
from ingest._ledger import Entry
from telemetry import (
    LineProtocolEncoder,
    PayloadError,
    TopicError,
    Topics,
    bookkeeping_line,
    decode_batch_partial,
)

__all__ = ["Batch", "Batching", "Chunk", "MessageDecoder"]

_HOUR_NS: Final = 3600 * 10**9


class Chunk:
    """The line protocol of one message, and what a dead-letter record of it needs."""

    __slots__ = (
        "body", "gateway", "good_index", "payload", "readings", "rejected", "seq", "topic",
    )

    def __init__(
        self,
        body: bytes,
        readings: int,
        *,
        rejected: int,
        topic: str,
        payload: bytes,
        gateway: str,
        seq: int,
        good_index: Sequence[int] | None,
    ) -> None:
        #: readings' lines, then the bookkeeping line
        self.body = body
        #: valid readings (lines before the bookkeeping line)
        self.readings = readings
        #: readings the contract refused (dead-lettered at decode, not in ``body``)
        self.rejected = rejected
        self.topic = topic
        self.payload = payload
        self.gateway = gateway
        self.seq = seq
        #: original reading index of each line when some readings were refused at decode
        self.good_index = good_index


class MessageDecoder:
    """Validates a message against the telemetry contract and encodes its line protocol."""

    __slots__ = ("_encoder", "_topics", "_worker")

    def __init__(self, topics: Topics, *, worker: str) -> None:
        self._topics = topics
        self._worker = worker
        self._encoder = LineProtocolEncoder()

    def decode(
        self, topic: str, payload: bytes, *, dup: bool, now: float
    ) -> tuple[Chunk | None, Refusal | None]:
        """The chunk to write and what to dead-letter; ``now`` is the ingest clock (Unix s).

        ``(None, refusal)``: the whole message is refused (topic, envelope, gateway).
        ``(chunk, refusal)``: some readings are refused, the others are in the chunk.
        ``(chunk, None)``: everything is valid.
        """
        try:
            gateway, _kind = self._topics.parse(topic)
        except TopicError as exc:
            return None, Refusal(stage="decode", kind="topic", reason=exc.reason)
        try:
            decoded = decode_batch_partial(payload)
        except PayloadError as exc:
            return None, Refusal(
                stage="decode", kind=exc.kind, reason=exc.reason, path=exc.path,
                gateway=gateway,
            )
        batch = decoded.batch
        if batch.gateway != gateway:
            return None, Refusal(
                stage="decode", kind="invalid", path="$.gw", gateway=gateway,
                reason=f"gateway {batch.gateway!r} in the payload differs from the topic's",
            )
        rejected = decoded.rejected
        readings = batch.readings
        n_good = len(readings)
        refusal: Refusal | None = None
        good_index: list[int] | None = None
        if rejected:
            refusal = Refusal(
                stage="decode", kind="invalid_readings", gateway=gateway, seq=batch.seq,
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
        received_ns = int(now * 1e9)
        # With no valid reading there is no device time: the ingest clock's hour it is.
        newest = max(r.ts for r in readings) if n_good else received_ns // _HOUR_NS * _HOUR_NS
        body = self._encoder.encode(gateway, readings) + bookkeeping_line(
            gateway=gateway, seq=batch.seq, newest_ts=newest, readings=n_good,
            rejected=len(rejected), dup=dup, worker=self._worker, received_ns=received_ns,
        ).encode()
        chunk = Chunk(
            body, n_good, rejected=len(rejected), topic=topic, payload=payload,
            gateway=gateway, seq=batch.seq, good_index=good_index,
        )
        return chunk, refusal


class Batch:
    """Chunks going to InfluxDB in one request, with the ledger entries they belong to."""

    __slots__ = ("chunks", "entries", "readings", "started")

    def __init__(self, started: float) -> None:
        self.chunks: list[Chunk] = []
        self.entries: list[Entry] = []
        self.readings = 0
        #: when its first message was taken (monotonic clock)
        self.started = started


class Batching:
    """Groups chunks into batches by size (readings, messages) and age."""

    __slots__ = ("_clock", "_max_messages", "_max_readings", "max_age", "pending")

    def __init__(
        self,
        *,
        max_readings: int,
        max_messages: int,
        max_age: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_readings = max_readings
        self._max_messages = max_messages
        self.max_age = max_age
        self._clock = clock
        #: the batch being formed, if any
        self.pending: Batch | None = None

    def add(self, chunk: Chunk, entry: Entry) -> bool:
        """Add a message's chunk; return whether the pending batch is now full."""
        batch = self.pending
        if batch is None:
            batch = self.pending = Batch(self._clock())
        batch.chunks.append(chunk)
        batch.entries.append(entry)
        batch.readings += chunk.readings
        return (
            batch.readings >= self._max_readings or len(batch.chunks) >= self._max_messages
        )

    def due_in(self, now: float) -> float | None:
        """Seconds until the pending batch is due by age (<= 0: due); ``None``: no batch."""
        batch = self.pending
        if batch is None:
            return None
        return batch.started + self.max_age - now

    def take(self) -> Batch | None:
        """The pending batch, which is then no longer pending."""
        batch, self.pending = self.pending, None
        return batch
