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
"""

from __future__ import annotations

import base64
from typing import Final

import msgspec

__all__ = ["DeadLetter", "RejectedItem", "encode_deadletter", "payload_field"]

_encoder: Final = msgspec.json.Encoder()


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
