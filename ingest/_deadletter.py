"""Dead-letter records: what was refused, why, and the original bytes.

Published (QoS 1, not retained) on ``{root}/v1/_sys/deadletter/{service}`` as JSON::

    {"v": 1, "service": "ingest", "worker": "ingest-0", "stage": "decode",
     "kind": "malformed", "reason": "not valid JSON: ...", "path": "$",
     "topic": "sc/v1/cab-17/telemetry", "gateway": "cab-17", "seq": 4711,
     "received": 1732780801234000000,
     "payload": "<original payload>", "payload_encoding": "utf-8" | "base64",
     "payload_truncated": false,
     "rejected": [{"index": 3, "reason": "...", "path": "$.r[3].f.speed", "raw": "{...}",
                   "line": "..."}]}

``stage`` is ``decode`` (the contract refused it) or ``influx`` (InfluxDB answered 400 for
these points: field type conflict, beyond retention...). ``rejected`` lists individual
readings when the rest of the batch was stored; it is absent when the whole message was
refused. A message is acknowledged only after its dead-letter record was acknowledged by the
broker, so a refused payload is never lost silently.

:class:`DeadLetters` builds the records and hands them to the session for publishing; the
message a record belongs to holds a part in the ack ledger until the broker confirms it.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import msgspec

from ingest._ledger import AckLedger, Entry
from ingest._metrics import IngestMetrics, Tally

__all__ = [
    "PAYLOAD_LIMIT",
    "DeadLetter",
    "DeadLetters",
    "Refusal",
    "RejectedItem",
    "encode_deadletter",
    "payload_field",
]

log = logging.getLogger("ingest")

_encoder: Final = msgspec.json.Encoder()
#: The original payload is kept up to this many bytes in a record.
PAYLOAD_LIMIT: Final = 1024 * 1024


class RejectedItem(msgspec.Struct, frozen=True, omit_defaults=True):
    index: int
    reason: str
    path: str = ""
    raw: str | None = None
    line: str | None = None


class DeadLetter(msgspec.Struct, frozen=True, omit_defaults=True):
    service: str
    worker: str
    stage: str
    kind: str
    reason: str
    topic: str
    received: int
    payload: str
    payload_encoding: str
    payload_truncated: bool = False
    path: str | None = None
    gateway: str | None = None
    seq: int | None = None
    rejected: list[RejectedItem] | None = None
    v: int = 1


def payload_field(payload: bytes, limit: int) -> tuple[str, str, bool]:
    """(text, encoding, truncated): UTF-8 when it decodes, base64 otherwise."""
    truncated = len(payload) > limit
    data = payload[:limit] if truncated else payload
    try:
        return data.decode("utf-8"), "utf-8", truncated
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64", truncated


def encode_deadletter(record: DeadLetter) -> bytes:
    return _encoder.encode(record)


@dataclass(frozen=True, slots=True, kw_only=True)
class Refusal:
    """Why (part of) a message is dead-lettered: the record without the message itself."""

    stage: str
    kind: str
    reason: str
    path: str | None = None
    gateway: str | None = None
    seq: int | None = None
    rejected: list[RejectedItem] | None = None


class DeadLetters:
    """Publishes dead-letter records; their messages stay unacknowledged until the broker
    confirms the record (``published``, from the session's on-publish callback)."""

    def __init__(
        self,
        *,
        topic: str,
        service: str,
        worker: str,
        publish: Callable[[str, bytes], int],
        ledger: AckLedger,
        metrics: IngestMetrics,
        tally: Tally,
    ) -> None:
        self._topic = topic
        self._service = service
        self._worker = worker
        self._publish = publish
        self._ledger = ledger
        self._metrics = metrics
        self._tally = tally

    def send(self, entry: Entry, topic: str, payload: bytes, refusal: Refusal) -> None:
        """Publish the record of ``refusal`` for the message (``topic``, ``payload``) that
        ``entry`` stands for; ``entry`` holds a part until the broker confirms it."""
        text, encoding, truncated = payload_field(payload, PAYLOAD_LIMIT)
        record = DeadLetter(
            service=self._service,
            worker=self._worker,
            stage=refusal.stage,
            kind=refusal.kind,
            reason=refusal.reason,
            path=refusal.path,
            topic=topic,
            gateway=refusal.gateway,
            seq=refusal.seq,
            received=time.time_ns(),
            payload=text,
            payload_encoding=encoding,
            payload_truncated=truncated,
            rejected=refusal.rejected,
        )
        self._tally.deadletters += 1
        self._metrics.messages_deadlettered.labels(refusal.kind).inc()
        log.info(
            "dead-lettered",
            extra={
                "worker": self._worker,
                "topic": topic,
                "kind": refusal.kind,
                "reason": refusal.reason,
                "path": refusal.path,
            },
        )
        mid = self._publish(self._topic, encode_deadletter(record))
        # The session reports the broker's confirmation on this (the event loop's) thread
        # through call_soon_threadsafe, so it cannot arrive before the mid is registered.
        self._ledger.hold_for_publish(entry, mid)

    def published(self, mid: int) -> bool:
        """The broker confirmed publish ``mid``; return whether it was a dead-letter record."""
        return self._ledger.published(mid)
