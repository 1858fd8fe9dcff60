"""Dead-letter records: what was refused, why, and the original bytes, stored durably.

A record is JSON, at most :data:`RECORD_LIMIT` bytes whatever it describes::

    {"v": 1, "service": "ingest", "worker": "ingest-0", "stage": "decode",
     "kind": "invalid_readings", "reason": "...", "path": "$", "topic": "sc/v1/cab-17/telemetry",
     "gateway": "cab-17", "seq": 4711, "received": 1732780801234000000,
     "payload": "<original payload>", "payload_encoding": "utf-8" | "base64",
     "payload_size": 18234, "payload_sha256": "<hex of the original payload>",
     "payload_truncated": false,
     "rejected": [{"index": 3, "code": "field_type", "reason": "...", "path": "$.r[3].f.x",
                   "raw": "{...}", "line": "..."}], "rejected_omitted": 0}

Where it goes::

    record ──▶ InfluxDB point ingest_deadletter (durable; the message is acked only after
    │          InfluxDB answered 204 for it, like any point; `smartcity ingest deadletters`)
    │            ingest_deadletter,gateway=<gw>,kind=<kind> stage="...",reason="...",
    │              topic="...",seq=<n>i,worker="...",payload_size=<n>i,payload_sha256="...",
    │              record="<the JSON record>" <ingest time, ns>
    └────────▶ MQTT {root}/v1/_sys/deadletter/{service}, QoS 1: a live notification, best
               effort (nobody may be subscribed: PUBACK 0x10; it never holds an ack)

With a per-gateway budget (``_dl_budget.py``) a refusal past the gateway's budget is counted
but makes neither record: :meth:`DeadLetters.record` returns ``None``; once per window
:meth:`DeadLetters.summaries` gives one compact point per gateway instead, no payload::

    ingest_deadletter,gateway=<gw>,kind=suppressed stage="budget",reason="...",worker="...",
      suppressed=<n>i,kinds="invalid:3,malformed:40",first_seen=<ns>i,last_seen=<ns>i,
      record="<JSON: the same, v 1>" <ingest time, ns>

``stage`` is ``decode`` (the contract or the vocabulary refused it), ``influx`` (InfluxDB
answered 400 for these points) or ``internal`` (processing the message raised an unexpected
exception: ``reason`` is the traceback's summary). The cap: reasons and the texts of rejected
items are cut first; rejected items past half the budget are left out (``rejected_omitted``);
then the payload is cut (``payload_truncated``, base64) so that the record fits. Its full
size and SHA-256 are always there. The cap (64 KiB) keeps a record far below the broker's
packet limit (``max_packet_size``) and InfluxDB's documented 64 KB string limit.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import time
import traceback
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import msgspec

from ingest._dl_budget import NO_GATEWAY, DeadLetterBudget
from ingest._errors import IngestError
from ingest._metrics import IngestMetrics, Tally
from telemetry import DEADLETTER_MEASUREMENT, escape_string_field, escape_tag

__all__ = [
    "RECORD_LIMIT",
    "DeadLetter",
    "DeadLetters",
    "Refusal",
    "RejectedItem",
    "encode_deadletter",
    "internal_refusal",
    "payload_field",
]

log = logging.getLogger("ingest")

_encoder: Final = msgspec.json.Encoder()
#: A record (JSON) never exceeds this many bytes.
RECORD_LIMIT: Final = 64 * 1024
_REASON_LIMIT: Final = 1024
_WARN_EVERY_S: Final = 60.0
_TEXT_LIMIT: Final = 2048
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


class RejectedItem(msgspec.Struct, frozen=True, omit_defaults=True):
    index: int
    reason: str
    path: str = ""
    raw: str | None = None
    line: str | None = None
    #: the reason's class (``contract``, ``field_type``, ``future_timestamp``...)
    code: str | None = None


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
    payload_size: int
    payload_sha256: str
    payload_truncated: bool
    path: str | None = None
    gateway: str | None = None
    seq: int | None = None
    rejected: list[RejectedItem] | None = None
    rejected_omitted: int = 0
    v: int = 1


def payload_field(payload: bytes, limit: int) -> tuple[str, str, bool]:
    """(text, encoding, truncated): the whole payload as UTF-8 text when it is UTF-8 and
    fits in ``limit`` bytes of JSON; otherwise base64 of as much as fits."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and len(_encoder.encode(text)) <= limit:
        return text, "utf-8", False
    keep = max(0, (limit - 2) // 4 * 3)
    truncated = len(payload) > keep
    return base64.b64encode(payload[:keep]).decode("ascii"), "base64", truncated


def encode_deadletter(record: DeadLetter) -> bytes:
    return _encoder.encode(record)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"... [{len(text)} chars]"


def _cut_item(item: RejectedItem) -> RejectedItem:
    return msgspec.structs.replace(
        item,
        reason=_cut(item.reason, _REASON_LIMIT),
        path=_cut(item.path, 256),
        raw=None if item.raw is None else _cut(item.raw, _TEXT_LIMIT),
        line=None if item.line is None else _cut(item.line, _TEXT_LIMIT),
    )


def capped_record(record: DeadLetter, payload: bytes, limit: int = RECORD_LIMIT) -> bytes:
    """``record`` with ``payload`` encoded into it, as JSON of at most ``limit`` bytes."""
    items = [_cut_item(i) for i in record.rejected] if record.rejected else None
    omitted = record.rejected_omitted
    base = msgspec.structs.replace(
        record, reason=_cut(record.reason, _REASON_LIMIT), path=record.path and
        _cut(record.path, 256), topic=_cut(record.topic, 512), rejected=items,
        payload="", payload_encoding="utf-8", payload_size=len(payload),
        payload_sha256=hashlib.sha256(payload).hexdigest(),
    )
    size = len(encode_deadletter(base))
    if items and size > limit // 2:
        # Keep the first items that fit in half the budget; the count says the rest.
        keep = len(items)
        while keep and size > limit // 2:
            keep //= 2
            base = msgspec.structs.replace(
                base, rejected=items[:keep] or None, rejected_omitted=omitted + len(items) - keep
            )
            size = len(encode_deadletter(base))
    text, encoding, truncated = payload_field(payload, limit - size - 64)
    out = encode_deadletter(msgspec.structs.replace(
        base, payload=text, payload_encoding=encoding, payload_truncated=truncated,
    ))
    assert len(out) <= limit, len(out)
    return out


def _printable(text: str) -> str:
    """A string field for line protocol: control characters shown, never raw."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _string(value: str) -> str:
    """A line-protocol string field: quoted, escaped, control characters shown."""
    return '"' + escape_string_field(_printable(value)) + '"'


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


def internal_refusal(exc: BaseException, *, gateway: str | None = None) -> Refusal:
    """The refusal of a message whose processing raised ``exc`` unexpectedly (a bug): the
    exception and the last frames of its traceback, in one line."""
    frames = traceback.extract_tb(exc.__traceback__)[-3:]
    where = " <- ".join(f"{f.name} ({f.filename.rsplit('/', 1)[-1]}:{f.lineno})"
                        for f in reversed(frames))
    return Refusal(
        stage="internal", kind="internal_error", gateway=gateway,
        reason=f"{type(exc).__name__}: {exc} at {where}",
    )


class DeadLetters:
    """Builds dead-letter records and their InfluxDB points; publishes each as a live
    notification. The caller writes the point (the message's ack waits for its 204)."""

    def __init__(
        self,
        *,
        topic: str,
        service: str,
        worker: str,
        publish: Callable[[str, bytes], object],
        metrics: IngestMetrics,
        tally: Tally,
        budget: DeadLetterBudget | None = None,
    ) -> None:
        self._topic = topic
        self._service = service
        self._worker = worker
        self._publish = publish
        self._metrics = metrics
        self._tally = tally
        self._budget = budget
        # Point times: the ingest clock's microsecond plus a per-worker offset, strictly
        # increasing, so two records never share a point (same gateway, kind and time).
        self._offset = zlib.crc32(worker.encode()) % 1000
        self._last_ts = 0
        # A flood of refusals (one hostile gateway) must not become a flood of warnings.
        self._unsent = 0
        self._warned_at = -_WARN_EVERY_S

    def record(self, topic: str, payload: bytes, refusal: Refusal) -> bytes | None:
        """Count the refusal, publish its record, return its InfluxDB line (no newline);
        ``None`` when the gateway is past its budget (counted, nothing to store or send).
        Only what the gateway sent counts against its budget (stage ``decode``): InfluxDB's
        refusals and internal errors are always recorded whole."""
        self._metrics.messages_deadlettered.labels(refusal.kind).inc()
        if (
            self._budget is not None
            and refusal.stage == "decode"
            and not self._budget.admit(refusal.gateway, refusal.kind)
        ):
            self._tally.deadletters_suppressed += 1
            self._metrics.deadletters_suppressed.inc()
            return None
        received = time.time_ns()
        record = DeadLetter(
            service=self._service, worker=self._worker, stage=refusal.stage,
            kind=refusal.kind, reason=refusal.reason, path=refusal.path, topic=topic,
            gateway=refusal.gateway, seq=refusal.seq, received=received, payload="",
            payload_encoding="utf-8", payload_size=0, payload_sha256="",
            payload_truncated=False, rejected=refusal.rejected,
        )
        text = capped_record(record, payload)
        self._tally.deadletters += 1
        log.log(
            logging.ERROR if refusal.stage == "internal" else logging.INFO,
            "dead-lettered",
            extra={"worker": self._worker, "topic": _cut(topic, 512), "kind": refusal.kind,
                   "reason": _cut(refusal.reason, _REASON_LIMIT), "path": refusal.path},
        )
        self._notify(text)
        return self._line(refusal, topic, payload, text, self._point_time(received))

    def summaries(self, *, force: bool = False) -> list[tuple[Refusal, bytes]]:
        """``(refusal, InfluxDB line)`` of each summary due now (every open one with
        ``force``): records left out over a gateway's budget. Stored only, never sent."""
        if self._budget is None:
            return []
        out = []
        for s in self._budget.due(force=force):
            received = time.time_ns()
            kinds = ",".join(f"{k}:{n}" for k, n in sorted(s.kinds.items()))
            reason = f"{s.count} dead-letter records over the gateway's budget not stored"
            record = _encoder.encode({
                "v": 1, "service": self._service, "worker": self._worker, "stage": "budget",
                "kind": "suppressed", "reason": reason, "gateway": s.gateway,
                "suppressed": s.count, "kinds": s.kinds, "first_seen": s.first_ns,
                "last_seen": s.last_ns, "received": received,
            })
            line = (
                f"{DEADLETTER_MEASUREMENT},gateway={escape_tag(_printable(s.gateway))},"
                f"kind=suppressed stage=\"budget\",reason={_string(reason)},"
                f"worker={_string(self._worker)},suppressed={s.count}i,"
                f"kinds={_string(_cut(kinds, _TEXT_LIMIT))},first_seen={s.first_ns}i,"
                f"last_seen={s.last_ns}i,record=\"{escape_string_field(record.decode())}\" "
                f"{self._point_time(received)}"
            ).encode()
            out.append((Refusal(stage="budget", kind="suppressed", reason=reason,
                                gateway=s.gateway), line))
            self._metrics.deadletter_summaries.inc()
        return out

    def _point_time(self, received: int) -> int:
        ts = received // 1000 * 1000 + self._offset
        if ts <= self._last_ts:
            ts = self._last_ts + 1000
        self._last_ts = ts
        return ts

    def _notify(self, text: bytes) -> None:
        try:
            self._publish(self._topic, text)
        except (IngestError, ValueError, OSError) as exc:
            # Only a notification: the record's durable copy is the InfluxDB point. Counted
            # always, logged at most once a minute with the running total.
            self._unsent += 1
            self._metrics.notifications_undelivered.labels("not_sent").inc()
            now = time.monotonic()
            if now - self._warned_at >= _WARN_EVERY_S:
                self._warned_at = now
                log.warning("dead-letter notification not published",
                            extra={"worker": self._worker, "error": str(exc),
                                   "unsent_total": self._unsent})

    def _line(
        self, refusal: Refusal, topic: str, payload: bytes, text: bytes, ts: int
    ) -> bytes:
        s = _string
        # JSON holds no raw control character but DEL, which InfluxDB stores as it is.
        record = '"' + escape_string_field(text.decode()) + '"'

        seq = f"seq={refusal.seq}i," if refusal.seq is not None else ""
        return (
            f"{DEADLETTER_MEASUREMENT},gateway={escape_tag(refusal.gateway or NO_GATEWAY)},"
            f"kind={escape_tag(_printable(refusal.kind))} "
            f"stage={s(refusal.stage)},reason={s(_cut(refusal.reason, _REASON_LIMIT))},"
            f"topic={s(_cut(topic, 512))},{seq}worker={s(self._worker)},"
            f"payload_size={len(payload)}i,"
            f"payload_sha256={s(hashlib.sha256(payload).hexdigest())},"
            f"record={record} {ts}"
        ).encode()
