"""The parts of a worker, without services: writer, ack ledger, batcher, tally.

The writer runs against a fake :class:`~ingest._sink.Sink` that behaves like InfluxDB 1.x
``/write`` (stores the good lines of a body, answers 400 ``partial write`` for the bad ones):
that is pure client logic. The real InfluxDB and mosquitto are in the other test modules.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random

import line_protocol_parser
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest import IngestMetrics, RetryConfig, WriteRejected, WriteRetryable
from ingest._batcher import Batching, Chunk, MessageDecoder
from ingest._bookkeeping import GatewayBook
from ingest._ledger import AckLedger
from ingest._metrics import Tally
from ingest._sink import Sink
from ingest._writer import Writer, WriteResult, backoff_for
from telemetry import BOOKKEEPING_MEASUREMENT, Batch, Reading, Topics, bookkeeping_ts, encode_batch
from tests.telemetry.strategies import ids, readings

# -- the writer ---------------------------------------------------------------------------


class FakeInflux:
    """InfluxDB 1.x ``/write`` as far as the writer can tell.

    Lines in ``bad`` are refused: the rest of the body is stored and the answer is 400
    ``partial write`` naming the first refused line. ``outages`` lists, per request number
    (from 0), a retryable failure to raise instead of answering.
    """

    def __init__(
        self, bad: set[bytes] | None = None, outages: dict[int, WriteRetryable] | None = None
    ) -> None:
        self.bad = bad or set()
        self.outages = outages or {}
        self.requests: list[bytes] = []
        self.stored: collections.Counter[bytes] = collections.Counter()

    async def prepare(self) -> None:
        pass

    async def write(self, body: bytes) -> None:
        n = len(self.requests)
        self.requests.append(body)
        if n in self.outages:
            raise self.outages[n]
        assert body.endswith(b"\n")
        lines = body[:-1].split(b"\n")
        refused = [line for line in lines if line in self.bad]
        self.stored.update(line for line in lines if line not in self.bad)
        if refused:
            raise WriteRejected(
                f"partial write: unable to parse {refused[0]!r} dropped={len(refused)}",
                status=400,
            )

    async def aclose(self) -> None:
        pass


class Sleeps:
    """Records the writer's waits instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def make_writer(
    sink: Sink, retry: RetryConfig | None = None
) -> tuple[Writer, Sleeps, Tally, IngestMetrics]:
    sleeps, tally, metrics = Sleeps(), Tally(), IngestMetrics()
    writer = Writer(
        sink, backoff_for(retry or RetryConfig()), metrics=metrics, tally=tally, worker="w-0",
        sleep=sleeps, rng=random.Random(7),
    )
    return writer, sleeps, tally, metrics


def line(part: int, n: int) -> bytes:
    return f"m,part={part} v={n}i {part * 1000 + n}".encode()


def write(writer: Writer, parts: list[list[bytes]]) -> WriteResult:
    return asyncio.run(writer.write([b"".join(x + b"\n" for x in part) for part in parts]))


def test_a_batch_influx_takes_is_one_request_and_every_part_is_accepted() -> None:
    sink = FakeInflux()
    writer, sleeps, tally, metrics = make_writer(sink)
    parts = [[line(p, 0), line(p, 1)] for p in range(5)]
    result = write(writer, parts)
    assert list(result.accepted) == [0, 1, 2, 3, 4]
    assert result.refused == []
    assert sink.requests == [b"".join(x + b"\n" for p in parts for x in p)]
    assert sleeps.waits == []
    assert tally.write_retries == 0
    assert metrics.registry.get_sample_value("smartcity_ingest_writes_total") == 1


def test_retryable_failures_are_retried_until_influx_answers() -> None:
    outages: dict[int, WriteRetryable] = {
        0: WriteRetryable("engine: error syncing wal", status=500),
        1: WriteRetryable("timeout: ReadTimeout()"),
        2: WriteRetryable("too many requests", status=429),
        3: WriteRetryable("service unavailable", status=503),
    }
    sink = FakeInflux(outages=outages)
    writer, sleeps, tally, metrics = make_writer(sink)
    result = write(writer, [[line(0, 0)], [line(1, 0)]])
    assert list(result.accepted) == [0, 1]
    assert len(sink.requests) == 5
    assert len(set(sink.requests)) == 1  # the same body every time
    assert len(sleeps.waits) == 4
    assert tally.write_retries == 4
    by_reason = {
        reason: metrics.registry.get_sample_value(
            "smartcity_ingest_write_retries_total", {"reason": reason}
        )
        for reason in ("500", "connection", "429", "503")
    }
    assert by_reason == {"500": 1, "connection": 1, "429": 1, "503": 1}


def test_backoff_grows_jittered_and_is_capped() -> None:
    retry = RetryConfig(initial_delay=0.1, max_delay=1.0, multiplier=2.0)
    sink = FakeInflux(outages={n: WriteRetryable("down", status=503) for n in range(40)})
    writer, sleeps, _, _ = make_writer(sink, retry)
    write(writer, [[line(0, 0)]])
    assert len(sleeps.waits) == 40
    for attempt, wait in enumerate(sleeps.waits):
        nominal = min(1.0, 0.1 * 2.0**attempt)
        assert nominal / 2 <= wait <= nominal
    assert max(sleeps.waits) <= 1.0
    assert len(set(sleeps.waits[10:])) > 1  # jittered, not lock-step


def test_retry_after_is_honoured_up_to_five_minutes() -> None:
    sink = FakeInflux(outages={
        0: WriteRetryable("busy", status=503, retry_after=7.0),
        1: WriteRetryable("busy", status=429, retry_after=86_400.0),
    })
    writer, sleeps, _, _ = make_writer(sink)
    write(writer, [[line(0, 0)]])
    assert sleeps.waits == [7.0, 300.0]


def test_a_400_is_not_retried_and_finds_the_one_bad_line() -> None:
    parts = [[line(p, 0), line(p, 1), line(p, 2)] for p in range(8)]
    bad = line(5, 1)
    sink = FakeInflux(bad={bad})
    writer, sleeps, tally, _ = make_writer(sink)
    result = write(writer, parts)
    assert sleeps.waits == []
    assert tally.write_retries == 0
    assert sorted(result.accepted) == [0, 1, 2, 3, 4, 6, 7]
    [refused] = result.refused
    assert (refused.index, refused.status, refused.line_count) == (5, 400, 3)
    assert [(r.index, r.line) for r in refused.lines] == [(1, bad)]
    assert repr(bad) in refused.lines[0].reason
    assert set(sink.stored) == {x for p in parts for x in p} - {bad}
    # Bisecting costs a few requests per bad line, not one per line.
    assert len(sink.requests) <= 1 + 2 * 3 + 2 * 2


@given(
    layout=st.lists(st.lists(st.booleans(), min_size=1, max_size=8), min_size=1, max_size=12),
    outage_every=st.sampled_from([0, 2, 3, 5]),
)
@settings(max_examples=150, deadline=None)
def test_bisecting_finds_exactly_the_bad_lines_among_good_ones(
    layout: list[list[bool]], outage_every: int
) -> None:
    """``layout[p][n]``: whether line ``n`` of part ``p`` is bad; with retryable failures
    sprinkled over the requests (every ``outage_every``-th), the verdict is the same."""
    parts = [[line(p, n) for n in range(len(flags))] for p, flags in enumerate(layout)]
    bad = {line(p, n) for p, flags in enumerate(layout) for n, is_bad in enumerate(flags) if is_bad}
    outages = (
        {n: WriteRetryable("down", status=503) for n in range(0, 500, outage_every)}
        if outage_every
        else {}
    )
    sink = FakeInflux(bad=bad, outages=outages)
    writer, _, _, _ = make_writer(sink)
    result = write(writer, parts)

    bad_parts = {p for p, flags in enumerate(layout) if any(flags)}
    assert sorted(result.accepted) == [p for p in range(len(layout)) if p not in bad_parts]
    assert sorted(r.index for r in result.refused) == sorted(bad_parts)
    for refused in result.refused:
        flags = layout[refused.index]
        assert refused.line_count == len(flags)
        assert sorted(r.index for r in refused.lines) == [n for n, b in enumerate(flags) if b]
        assert all(r.line == line(refused.index, r.index) for r in refused.lines)
    good = {line(p, n) for p, flags in enumerate(layout) for n in range(len(flags))} - bad
    assert set(sink.stored) == good  # every good line stored (maybe rewritten: idempotent)


def test_cancelling_a_write_reports_nothing() -> None:
    class Down(FakeInflux):
        async def write(self, body: bytes) -> None:
            self.requests.append(body)
            raise WriteRetryable("down", status=503)

    sink = Down()

    async def run() -> None:
        writer = Writer(
            sink, backoff_for(RetryConfig(initial_delay=0.01, max_delay=0.01)),
            metrics=IngestMetrics(), tally=Tally(), worker="w-0",
        )
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await writer.write([line(0, 0) + b"\n"])

    asyncio.run(run())
    assert len(sink.requests) >= 2


def test_backoff_for_keeps_the_first_wait_within_the_cap() -> None:
    backoff = backoff_for(RetryConfig(initial_delay=5.0, max_delay=1.0))
    assert backoff.initial == 1.0
    assert backoff.delay(0) <= 1.0


# -- the ack ledger -----------------------------------------------------------------------


def test_acks_are_released_in_receive_order() -> None:
    ledger = AckLedger()
    entries = [ledger.receive(0, mid, 1) for mid in (11, 12, 13)]
    for entry in entries:
        ledger.hold(entry)
    assert not ledger.ready
    for entry in entries:
        ledger.complete(entry)
    assert ledger.release(0) == [(11, 1), (12, 1), (13, 1)]
    assert len(ledger) == 0
    assert ledger.release(0) == []


def test_a_message_done_early_waits_for_the_ones_before_it() -> None:
    ledger = AckLedger()
    first, second, third = (ledger.receive(0, mid, 1) for mid in (1, 2, 3))
    for entry in (first, second, third):
        ledger.hold(entry)
    ledger.complete(third)
    ledger.complete(second)
    assert not ledger.ready
    assert ledger.release(0) == []
    assert len(ledger) == 3
    ledger.complete(first)
    assert ledger.release(0) == [(1, 1), (2, 1), (3, 1)]


def test_release_stops_at_the_first_message_not_done() -> None:
    ledger = AckLedger()
    a, b, c = (ledger.receive(0, mid, 1) for mid in (1, 2, 3))
    for entry in (a, b, c):
        ledger.hold(entry)
    ledger.complete(a)
    ledger.complete(c)
    assert ledger.release(0) == [(1, 1)]
    assert len(ledger) == 2
    ledger.complete(b)
    assert ledger.release(0) == [(2, 1), (3, 1)]


def test_acks_of_a_stale_epoch_are_dropped_not_sent() -> None:
    ledger = AckLedger()
    old = [ledger.receive(0, mid, 1) for mid in (1, 2)]
    new = ledger.receive(1, 1, 1)  # the same packet id, on the new connection
    for entry in (*old, new):
        ledger.hold(entry)
        ledger.complete(entry)
    assert ledger.release(1) == [(1, 1)]
    assert len(ledger) == 0


def test_qos0_messages_need_no_ack() -> None:
    ledger = AckLedger()
    entry = ledger.receive(0, 0, 0)
    ledger.hold(entry)
    ledger.complete(entry)
    assert ledger.release(0) == []
    assert len(ledger) == 0


def test_a_dead_lettered_message_is_done_once_the_broker_confirms_the_record() -> None:
    ledger = AckLedger()
    refused = ledger.receive(0, 1, 1)  # wholly refused: only the dead-letter record
    partly = ledger.receive(0, 2, 1)  # some readings refused: record + its write
    ledger.hold_for_publish(refused, mid=101)
    ledger.hold_for_publish(partly, mid=102)
    ledger.hold(partly)
    assert not ledger.ready
    assert ledger.published(999) is False  # not a record the ledger waits for
    assert ledger.published(101) is True
    assert ledger.release(0) == [(1, 1)]
    ledger.complete(partly)  # written, record not yet confirmed
    assert not ledger.ready
    assert ledger.published(102) is True
    assert ledger.release(0) == [(2, 1)]
    assert ledger.published(102) is False  # confirmed once only


# -- the batcher --------------------------------------------------------------------------

ROOT = "unit"
NOW = 1_732_780_801.25
normal_readings = readings(subnormal=False)


def decoder() -> MessageDecoder:
    # No clock-skew limit: the strategies draw timestamps up to 2100 (the skew has its tests).
    return MessageDecoder(Topics(ROOT), worker="w-0", max_clock_skew=None)


def parse_lines(lines: list[bytes]) -> list[dict[str, object]]:
    assert all(b"\n" not in x for x in lines)
    return [line_protocol_parser.parse_line(x.decode()) for x in lines]


def check_bookkeeping(
    parsed: dict[str, object], *, gateway: str, seq: int, newest: int, good: int, rejected: int,
    dup: bool,
) -> None:
    assert parsed["measurement"] == BOOKKEEPING_MEASUREMENT
    assert parsed["tags"] == {"gateway": gateway}
    assert parsed["time"] == bookkeeping_ts(newest, seq)
    assert parsed["fields"] == {
        "seq": seq, "readings": good, "rejected": rejected, "dup": dup, "worker": "w-0",
        "received": int(NOW * 1e9),
    }


@given(gateway=ids, seq=st.integers(0, 2**63 - 1),
       batch=st.lists(normal_readings, min_size=1, max_size=8), dup=st.booleans())
@settings(max_examples=100, deadline=None)
def test_any_valid_batch_becomes_lines_that_parse_back(
    gateway: str, seq: int, batch: list[Reading], dup: bool
) -> None:
    payload = encode_batch(Batch(gateway=gateway, seq=seq, readings=batch))
    chunk, refusal = decoder().decode(
        Topics(ROOT).telemetry(gateway), payload, dup=dup, now=NOW
    )
    assert refusal is None
    assert chunk is not None
    assert (chunk.gateway, chunk.seq, chunk.readings, chunk.rejected) == (
        gateway, seq, len(batch), 0
    )
    assert chunk.good_index is None
    parsed = parse_lines(chunk.lines)
    assert len(parsed) == len(batch) + 1
    for point, reading in zip(parsed, batch, strict=False):
        assert point["measurement"] == reading.measurement
        assert point["time"] == reading.ts
        assert point["tags"] == {**reading.tags, "gateway": gateway, "device": reading.device}
    check_bookkeeping(
        parsed[-1], gateway=gateway, seq=seq, newest=max(r.ts for r in batch),
        good=len(batch), rejected=0, dup=dup,
    )


@given(
    batch=st.lists(normal_readings, min_size=1, max_size=8),
    data=st.data(),
)
@settings(max_examples=80, deadline=None)
def test_bad_readings_go_to_dead_letters_and_good_ones_are_kept(
    batch: list[Reading], data: st.DataObject
) -> None:
    bad = data.draw(st.sets(st.integers(0, len(batch) - 1), min_size=1, max_size=len(batch)))
    wire = json.loads(encode_batch(Batch(gateway="gw-1", seq=42, readings=batch)))
    for i in bad:
        wire["r"][i]["t"] = 5  # 1970: outside the contract's time window
    payload = json.dumps(wire).encode()
    chunk, refusal = decoder().decode(
        Topics(ROOT).telemetry("gw-1"), payload, dup=False, now=NOW
    )
    assert chunk is not None
    assert refusal is not None
    assert (refusal.stage, refusal.kind, refusal.gateway, refusal.seq) == (
        "decode", "invalid_readings", "gw-1", 42
    )
    assert refusal.rejected is not None
    assert sorted(item.index for item in refusal.rejected) == sorted(bad)
    good = [i for i in range(len(batch)) if i not in bad]
    assert (chunk.readings, chunk.rejected) == (len(good), len(bad))
    assert chunk.good_index == good
    parsed = parse_lines(chunk.lines)
    assert [p["time"] for p in parsed[:-1]] == [batch[i].ts for i in good]
    hour = 3600 * 10**9
    newest = max(batch[i].ts for i in good) if good else int(NOW * 1e9) // hour * hour
    check_bookkeeping(
        parsed[-1], gateway="gw-1", seq=42, newest=newest, good=len(good), rejected=len(bad),
        dup=False,
    )


@pytest.mark.parametrize(
    ("topic", "payload", "kind", "path"),
    [
        (f"{ROOT}/v1/gw-1/nonsense", b"{}", "topic", None),
        (f"{ROOT}/v1/gw-1/telemetry", b"\x00\x01binary", "malformed", None),
        (f"{ROOT}/v1/gw-1/telemetry",
         json.dumps({"v": 99, "gw": "gw-1", "seq": 3, "r": []}).encode(),
         "unsupported_version", None),
        (f"{ROOT}/v1/gw-2/telemetry",
         encode_batch(Batch(gateway="gw-1", seq=1, readings=[
             Reading(device="d", measurement="M", ts=1_732_780_800 * 10**9, fields={"x": 1.0})
         ])),
         "invalid", "$.gw"),
    ],
)
def test_a_message_refused_whole_has_no_chunk(
    topic: str, payload: bytes, kind: str, path: str | None
) -> None:
    chunk, refusal = decoder().decode(topic, payload, dup=False, now=NOW)
    assert chunk is None
    assert refusal is not None
    assert (refusal.stage, refusal.kind) == ("decode", kind)
    if path is not None:
        assert refusal.path == path
    assert refusal.reason


def _chunk(readings: int) -> Chunk:
    return Chunk(
        b"x\n" * (readings + 1), readings, rejected=0, topic="t", payload=b"", gateway="g",
        seq=0, good_index=None,
    )


def test_batching_flushes_by_readings_messages_and_age() -> None:
    now = [100.0]
    batching = Batching(max_readings=10, max_messages=3, max_age=0.5, clock=lambda: now[0])
    ledger = AckLedger()
    assert batching.due_in(now[0]) is None
    assert batching.take() is None
    assert not batching.add(_chunk(4), ledger.receive(0, 1, 1))
    assert batching.due_in(100.2) == pytest.approx(0.3)
    assert batching.add(_chunk(6), ledger.receive(0, 2, 1))  # 10 readings
    full = batching.take()
    assert full is not None
    assert (len(full.chunks), full.readings, full.started) == (2, 10, 100.0)
    assert [e.mid for e in full.entries] == [1, 2]
    assert batching.pending is None
    now[0] = 200.0
    assert not batching.add(_chunk(0), ledger.receive(0, 3, 1))
    assert not batching.add(_chunk(0), ledger.receive(0, 4, 1))
    assert batching.add(_chunk(0), ledger.receive(0, 5, 1))  # 3 messages
    batching.take()
    batching.add(_chunk(1), ledger.receive(0, 6, 1))
    due = batching.due_in(200.6)
    assert due is not None
    assert due <= 0


# -- the tally ----------------------------------------------------------------------------


def test_the_tally_brings_prometheus_up_to_date_in_bulk() -> None:
    tally, metrics, book = Tally(), IngestMetrics(), GatewayBook()
    tally.messages_received += 3
    tally.readings_written += 250
    book.observe("gw-1", 5, dup=False, now=NOW)
    book.observe("gw-1", 8, dup=False, now=NOW)
    tally.dirty_gateways.add("gw-1")
    tally.sync(metrics, book)
    tally.sync(metrics, book)  # nothing new: nothing counted twice
    value = metrics.registry.get_sample_value
    assert value("smartcity_ingest_messages_received_total") == 3
    assert value("smartcity_ingest_readings_written_total") == 250
    assert value("smartcity_ingest_gateway_last_seq", {"gateway": "gw-1"}) == 8
    assert value("smartcity_ingest_gateway_seq_gaps_total", {"gateway": "gw-1"}) == 2
