"""Hardening of the worker's parts, without services: dead-letter records always fit, the
decoder survives any message, refused lines map back to readings, metrics stay local."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from pathlib import Path

import line_protocol_parser
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest import IngestConfig, IngestMetrics, load_config
from ingest._batcher import MessageDecoder
from ingest._deadletter import (
    RECORD_LIMIT,
    DeadLetters,
    Refusal,
    RejectedItem,
    internal_refusal,
)
from ingest._metrics import Tally
from ingest._writer import RefusedLine, RefusedPart
from telemetry import Topics

ROOT = "unit"
NOW = 1_732_780_801.25
TS = 1_732_780_800 * 10**9
DEPLOY = Path(__file__).parents[2] / "deploy" / "ingest.yaml"


def deadletters() -> tuple[DeadLetters, list[bytes]]:
    published: list[bytes] = []
    dl = DeadLetters(
        topic=f"{ROOT}/v1/_sys/deadletter/ingest", service="ingest", worker="w-0",
        publish=lambda _topic, payload: published.append(payload), metrics=IngestMetrics(),
        tally=Tally(),
    )
    return dl, published


texts = st.text(max_size=3000)
items = st.builds(
    RejectedItem, index=st.integers(-1, 2000), reason=texts, path=st.text(max_size=300),
    raw=st.none() | texts, line=st.none() | texts,
)


@given(
    payload=st.binary(max_size=400_000) | st.sampled_from([b"\x01" * 300_000, b'"' * 250_000]),
    rejected=st.none() | st.lists(items, max_size=60),
    reason=texts,
)
@settings(max_examples=60, deadline=None)
def test_a_record_always_fits_and_says_what_it_cut(
    payload: bytes, rejected: list[RejectedItem] | None, reason: str
) -> None:
    dl, published = deadletters()
    line = dl.record(
        f"{ROOT}/v1/gw-1/telemetry", payload,
        Refusal(stage="decode", kind="malformed", reason=reason, gateway="gw-1", seq=3,
                rejected=rejected),
    )
    [record] = published
    assert len(record) <= RECORD_LIMIT  # the broker's max_packet_size is 1,100,000
    body = json.loads(record)
    assert body["payload_size"] == len(payload)
    assert body["payload_sha256"] == hashlib.sha256(payload).hexdigest()
    kept = (base64.b64decode(body["payload"]) if body["payload_encoding"] == "base64"
            else body["payload"].encode())
    assert payload.startswith(kept)
    assert body["payload_truncated"] == (kept != payload)
    listed = len(body.get("rejected", []))
    assert listed + body.get("rejected_omitted", 0) == len(rejected or [])
    # The InfluxDB point: one line, fields as written, the record inside it whole.
    assert b"\n" not in line
    point = line_protocol_parser.parse_line(line.decode())
    assert point["measurement"] == "ingest_deadletter"
    assert point["tags"] == {"gateway": "gw-1", "kind": "malformed"}
    assert point["fields"]["record"].encode() == record
    assert point["fields"]["seq"] == 3


def test_points_of_one_worker_never_share_a_time() -> None:
    dl, _ = deadletters()
    refusal = Refusal(stage="decode", kind="malformed", reason="x", gateway="gw-1")
    times = [line_protocol_parser.parse_line(dl.record("t", b"x", refusal).decode())["time"]
             for _ in range(50)]
    assert len(set(times)) == 50


def test_an_unexpected_exception_becomes_the_messages_dead_letter() -> None:
    decoder = MessageDecoder(Topics(ROOT), worker="w-0")

    class Boom(RuntimeError):
        pass

    class Exploding:
        def encode(self, *_a: object, **_k: object) -> object:
            raise Boom("kaput")

    decoder._intake = Exploding()  # type: ignore[assignment]
    payload = msgspec.json.encode({"v": 1, "gw": "gw-1", "seq": 1, "r": [
        {"d": "d", "m": "TrafficFlowObserved", "t": TS, "f": {"intensity": 1.0}}]})
    chunk, refusal = decoder.decode(f"{ROOT}/v1/gw-1/telemetry", payload, dup=False, now=NOW)
    assert chunk is None
    assert refusal is not None
    assert (refusal.stage, refusal.kind, refusal.gateway) == ("internal", "internal_error", "gw-1")
    assert refusal.reason.startswith("Boom: kaput at encode (test_ingest_hardening.py:")


def test_internal_refusal_names_the_innermost_frames_first() -> None:
    def inner() -> None:
        raise KeyError("k")

    try:
        inner()
    except KeyError as exc:
        refusal = internal_refusal(exc)
    assert refusal.reason.startswith("KeyError: 'k' at inner (")


def test_refused_lines_map_back_to_readings_bookkeeping_and_deadletter() -> None:
    decoder = MessageDecoder(Topics(ROOT), worker="w-0")
    payload = msgspec.json.encode({"v": 1, "gw": "gw-1", "seq": 7, "r": [
        {"d": "d", "m": "Custom", "t": TS, "f": {"v": 1.0}},
        {"d": "d", "m": "TrafficFlowObserved", "t": TS, "f": {"intensity": "x"}},
        {"d": "d", "m": "Custom", "t": TS + 1, "f": {"v": 2.0}},
        {"d": "d", "m": "Custom", "t": 5, "f": {"v": 3.0}},
    ]})
    chunk, refusal = decoder.decode(f"{ROOT}/v1/gw-1/telemetry", payload, dup=False, now=NOW)
    assert chunk is not None
    assert refusal is not None
    assert refusal.rejected is not None
    assert [(i.index, i.code) for i in refusal.rejected] == [(1, "field_type"), (3, "contract")]
    assert chunk.refused_codes == {"field_type": 1, "contract": 1}
    assert chunk.good_index == [0, 2]
    chunk.add_deadletter(b"ingest_deadletter,gateway=gw-1,kind=x reason=\"r\" 1")
    assert len(chunk.lines) == 4  # 2 readings, bookkeeping, dead letter
    refused = RefusedPart(index=0, status=400, message="m", line_count=4, lines=[
        RefusedLine(1, "conflict", chunk.lines[1]),
        RefusedLine(2, "conflict", chunk.lines[2]),
        RefusedLine(3, "bad", chunk.lines[3]),
    ])
    n_bad, rejected, lost = chunk.classify(refused)
    assert (n_bad, [i.index for i in rejected], lost) == (1, [2, -1], True)


def test_metrics_bind_loopback_unless_told_otherwise() -> None:
    assert IngestConfig().metrics_host == "127.0.0.1"
    shipped = load_config(DEPLOY)
    assert shipped.metrics_host == "127.0.0.1"
    assert shipped.intake.max_clock_skew == 300
    assert load_config(None, {"metrics_host": "0.0.0.0"}).metrics_host == "0.0.0.0"  # noqa: S104


def test_a_flood_of_refusals_with_the_notification_window_full_is_counted_not_logged_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A hostile gateway's flood of bad messages while the publish window is full: every
    record still makes its point, each undelivered notification is counted, and the log gets
    one warning, not one per record ("1000 publishes wait for their PUBACK" x 1000)."""
    from ingest._errors import BrokerError

    def full(_topic: str, _payload: bytes) -> None:
        raise BrokerError("not published: 1000 publishes wait for their PUBACK")

    metrics = IngestMetrics()
    dl = DeadLetters(
        topic=f"{ROOT}/v1/_sys/deadletter/ingest", service="ingest", worker="w-0",
        publish=full, metrics=metrics, tally=Tally(),
    )
    with caplog.at_level(logging.WARNING, logger="ingest"):
        lines = [
            dl.record(f"{ROOT}/v1/gw-1/telemetry", b"{", Refusal(
                stage="decode", kind="malformed", reason="bad", gateway="gw-1", seq=i))
            for i in range(1000)
        ]
    assert len(set(lines)) == 1000
    warnings = [r for r in caplog.records if "notification not published" in r.getMessage()]
    assert len(warnings) == 1
    assert metrics.notifications_undelivered.labels("not_sent")._value.get() == 1000
