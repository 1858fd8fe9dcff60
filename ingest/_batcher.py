"""From MQTT messages to write batches: pure functions and plain objects, no I/O.

::

    (topic, payload, dup) ──decode──▶ conform + encode in one pass (telemetry.Intake:
                             │           vocabulary types, reserved measurements, clock
                             │           skew, control chars, series budget)
                             ├───────▶ Chunk: a list of lines, one per valid reading, then
                             │          one bookkeeping line (ingest_batch)
                             └───────▶ Refusal: the whole message, or the refused readings
                                         (both may come out: one bad reading never drops
                                         the good ones of its message); an unexpected
                                         exception is a Refusal too (stage "internal")

Line protocol stays a list of lines from the encoder to the writer's bisection: nothing cuts
a body at newlines again, so line ``i`` is always the ``i``-th point of its message.

    Chunk, Chunk, ... ──Batching──▶ Batch: flushed at max_readings readings, or max_messages
                                    messages, or when its first message is max_age old

A chunk is never split across batches: a message's points and its bookkeeping point go to
InfluxDB in one request, so the bookkeeping point exists exactly when the readings do.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Final

import msgspec

from ingest._deadletter import Refusal, RejectedItem, internal_refusal
from ingest._ledger import Entry
from ingest._writer import RefusedPart
from telemetry import (
    DEFAULT_MAX_CLOCK_SKEW_S,
    Intake,
    InvalidPayload,
    Nonconformity,
    PayloadError,
    Reading,
    TopicError,
    Topics,
    bookkeeping_line,
    decode_batch_partial,
)

__all__ = ["Batch", "Batching", "Chunk", "MessageDecoder"]

_HOUR_NS: Final = 3600 * 10**9
_json: Final = msgspec.json.Encoder()


class Chunk:
    """The line protocol of one message, and what a dead-letter record of it needs.

    ``body`` (each line ending in a newline, a request body as it is): the valid readings'
    lines, in order, then the bookkeeping line (``ingest_batch``, when the envelope was
    valid), then the dead-letter line (``ingest_deadletter``, when part of the message was
    refused). Line ``i`` below ``readings`` is always reading ``good_index[i]`` (or ``i``)
    of the payload. ``lines`` cuts it into lines, for the rare paths that need them.
    """

    __slots__ = (
        "body", "bookkeeping", "deadletter", "gateway", "good_index", "payload", "readings",
        "refused_codes", "rejected", "seq", "topic",
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
        bookkeeping: bool = True,
        refused_codes: dict[str, int] | None = None,
    ) -> None:
        self.body = body
        #: valid readings (the first lines)
        self.readings = readings
        #: readings refused at decode (contract or vocabulary; dead-lettered, not in lines)
        self.rejected = rejected
        self.topic = topic
        self.payload = payload
        #: the topic's gateway ("" when the topic named none)
        self.gateway = gateway
        #: the batch's seq (-1 when the envelope was refused)
        self.seq = seq
        #: original reading index of each line when some readings were refused at decode
        self.good_index = good_index
        #: whether the line after the readings is the bookkeeping line
        self.bookkeeping = bookkeeping
        #: whether the last line is this message's dead-letter point
        self.deadletter = False
        #: refused readings per reason class (``contract``, ``field_type``...)
        self.refused_codes = refused_codes or {}

    @classmethod
    def for_deadletter(
        cls, line: bytes, *, topic: str, payload: bytes, refusal: Refusal
    ) -> Chunk:
        """A message refused whole: its only line is its dead-letter point."""
        chunk = cls(
            line + b"\n", 0, rejected=0, topic=topic, payload=payload,
            gateway=refusal.gateway or "", seq=-1 if refusal.seq is None else refusal.seq,
            good_index=None, bookkeeping=False,
        )
        chunk.deadletter = True
        return chunk

    def add_deadletter(self, line: bytes) -> None:
        """Write this message's dead-letter point in the same request as its readings."""
        self.body += line + b"\n"
        self.deadletter = True

    @property
    def lines(self) -> list[bytes]:
        """The body's lines, each without its newline."""
        lines = self.body.split(b"\n")
        lines.pop()
        return lines

    def classify(self, refused: RefusedPart) -> tuple[int, list[RejectedItem], bool]:
        """InfluxDB refused lines of this chunk: (readings refused, the items to dead-letter,
        whether its own dead-letter point was refused). The bookkeeping line is index -1."""
        n_bad = 0
        items: list[RejectedItem] = []
        lost_deadletter = False
        last = self.body.count(b"\n") - 1
        good_index = self.good_index
        for line in refused.lines:
            if self.deadletter and line.index == last:
                lost_deadletter = True
                continue
            if line.index < self.readings:
                n_bad += 1
                index = good_index[line.index] if good_index else line.index
            else:
                index = -1
            items.append(RejectedItem(
                index=index, reason=line.reason, line=line.line.decode("utf-8", "replace"),
            ))
        return n_bad, items, lost_deadletter


def _item(index: int, why: Nonconformity, reading: Reading) -> RejectedItem:
    path = why.path.replace("$", f"$.r[{index}]", 1)
    return RejectedItem(
        index=index, code=why.reason, reason=why.detail, path=path,
        raw=_json.encode(reading).decode("utf-8", "replace"),
    )


class MessageDecoder:
    """Validates a message against the telemetry contract and the vocabulary and encodes its
    line protocol (:class:`telemetry.Intake`: the conformer's checks and the encoder in one
    pass)."""

    __slots__ = ("_intake", "_topics", "_worker")

    def __init__(
        self, topics: Topics, *, worker: str,
        max_clock_skew: float | None = DEFAULT_MAX_CLOCK_SKEW_S,
        max_series_per_gateway: int | None = None,
    ) -> None:
        self._topics = topics
        self._worker = worker
        self._intake = Intake(
            max_clock_skew_s=max_clock_skew, max_series_per_gateway=max_series_per_gateway or None
        )

    def decode(
        self, topic: str, payload: bytes, *, dup: bool, now: float
    ) -> tuple[Chunk | None, Refusal | None]:
        """The chunk to write and what to dead-letter; ``now`` is the ingest clock (Unix s).

        ``(None, refusal)``: the whole message is refused (topic, envelope, gateway), or
        processing it raised an unexpected exception (``stage="internal"``).
        ``(chunk, refusal)``: some readings are refused, the others are in the chunk.
        ``(chunk, None)``: everything is valid.
        """
        try:
            return self._decode(topic, payload, dup=dup, now=now)
        except Exception as exc:  # noqa: BLE001 - one message never stops a worker (design.md)
            return None, internal_refusal(exc, gateway=self._gateway_of(topic))

    def _gateway_of(self, topic: str) -> str | None:
        try:
            return self._topics.parse(topic)[0]
        except TopicError:
            return None

    def _decode(
        self, topic: str, payload: bytes, *, dup: bool, now: float
    ) -> tuple[Chunk | None, Refusal | None]:
        try:
            gateway, _kind = self._topics.parse(topic)
        except TopicError as exc:
            return None, Refusal(stage="decode", kind="topic", reason=exc.reason)
        received_ns = int(now * 1e9)
        try:
            # The names inside readings are checked by the intake, for shapes not seen pass.
            decoded = decode_batch_partial(payload, reading_names=False)
            batch = decoded.batch
            if batch.gateway != gateway:
                return None, Refusal(
                    stage="decode", kind="invalid", path="$.gw", gateway=gateway,
                    reason=f"gateway {batch.gateway!r} in the payload differs from the topic's",
                )
            try:
                encoded = self._intake.encode(
                    gateway, batch.readings, received_ns, check_names=True
                )
            except InvalidPayload:
                # A name the contract refuses: the checked decode says which readings and why
                # (the intake did for the readings before it what it does for them again).
                decoded = decode_batch_partial(payload)
                batch = decoded.batch
                encoded = self._intake.encode(gateway, batch.readings, received_ns)
        except PayloadError as exc:
            return None, Refusal(
                stage="decode", kind=exc.kind, reason=exc.reason, path=exc.path,
                gateway=gateway,
            )
        total = len(batch.readings) + len(decoded.rejected)
        items = [
            RejectedItem(
                index=r.index, code="contract", reason=r.reason, path=r.path,
                raw=r.raw.decode("utf-8", "replace"),
            )
            for r in decoded.rejected
        ]
        bad = {r.index for r in decoded.rejected}
        decoded_index = [i for i in range(total) if i not in bad] if bad else None
        for n, why in encoded.refused:
            index = decoded_index[n] if decoded_index else n
            items.append(_item(index, why, batch.readings[n]))
            bad.add(index)
        codes: dict[str, int] = {}
        for item in items:
            codes[item.code or "contract"] = codes.get(item.code or "contract", 0) + 1
        n_good = encoded.kept
        refusal: Refusal | None = None
        good_index: list[int] | None = None
        if items:
            items.sort(key=lambda item: item.index)
            refusal = Refusal(
                stage="decode", kind="invalid_readings", gateway=gateway, seq=batch.seq,
                reason=f"{len(items)} of {total} readings refused",
                rejected=items,
            )
            good_index = [i for i in range(total) if i not in bad]
        # With no valid reading there is no device time: the ingest clock's hour it is.
        newest = (
            encoded.newest_ts if encoded.newest_ts is not None
            else received_ns // _HOUR_NS * _HOUR_NS
        )
        body = encoded.body + bookkeeping_line(
            gateway=gateway, seq=batch.seq, newest_ts=newest, readings=n_good,
            rejected=len(items), dup=dup, worker=self._worker, received_ns=received_ns,
        ).encode()
        chunk = Chunk(
            body, n_good, rejected=len(items), topic=topic, payload=payload,
            gateway=gateway, seq=batch.seq, good_index=good_index, refused_codes=codes,
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
