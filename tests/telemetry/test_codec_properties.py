"""Property tests: whatever bytes arrive, the decoders return or raise a PayloadError.

The decoders face the outside world (any one gateway may be hostile, its firmware buggy),
and the ingest worker and the API catch :class:`PayloadError` to dead-letter a payload. An
exception outside that tree would escape them, so these tests feed arbitrary bytes and
mutations of valid payloads (byte flips, truncations, insertions, bad UTF-8 spliced into
strings, huge numbers, deep nesting, wrong types, NaN/Infinity, duplicate keys, oversize) to
every decoder. For :func:`decode_batch_partial` they also check that exactly the bad
readings are refused, each with its index, and every good one around them is kept.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telemetry import (
    MAX_PAYLOAD_BYTES,
    TS_MAX_NS,
    TS_MIN_NS,
    Batch,
    Birth,
    CommandRequest,
    CommandResponse,
    ConfigDesired,
    ConfigReported,
    Death,
    DecodedBatch,
    DeviceInfo,
    Health,
    InvalidPayload,
    Location,
    MalformedPayload,
    PayloadError,
    PayloadTooLarge,
    Reading,
    SpoolHealth,
    TopicError,
    TopicKind,
    Topics,
    UnsupportedVersion,
    decode_batch,
    decode_batch_partial,
    decode_message,
    decode_status,
    encode_batch,
    encode_message,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TS = TS_MIN_NS + 10**18

# Valid readings to mutate. A fixed, varied set (every field type, tags, non-ASCII text,
# escapes, extreme numbers) keeps these tests fast: drawing random valid readings costs more
# than decoding them, and their variety is test_codec.py's round-trip property's job.
SEED_READINGS = [
    Reading(device="loop-3", measurement="TrafficFlowObserved", ts=TS, fields={"intensity": 540.0}),
    Reading(
        device="bus-4711:gps",
        measurement="Vehicle",
        ts=TS + 1,
        fields={"speed": 43.5, "bearing": 270, "doorsOpen": False, "line": "31 \"Tøyen\" \\ ✓"},
        tags={"route": "Ring 1", "operator": "Ruter/Øst"},
        quality="uncertain",
        clock="gateway",
    ),
    Reading(
        device="x" * 64,
        measurement="A" + "b" * 63,
        ts=TS_MAX_NS - 1,
        fields={"max": 2**63 - 1, "min": -(2**63), "big": 1.7976931348623157e308, "tiny": 5e-324},
    ),
    Reading(
        device="aq.7",
        measurement="AirQualityObserved",
        ts=TS_MIN_NS,
        fields={"no2": 0.0, "pm10": -0.0, "note": "\tunits: µg/m³ 🌫"},
        tags={"site": "Kirkeveien", "height": "2m"},
        quality="bad",
    ),
]
seed_readings = st.sampled_from(SEED_READINGS)
seed_batches = st.builds(
    lambda gateway, seq, rs: Batch(gateway=gateway, seq=seq, readings=rs),
    st.sampled_from(["cabinet-017", "g", "bus.4711:a-b"]),
    st.integers(0, 2**63 - 1),
    st.lists(seed_readings, min_size=1, max_size=5),
)

# Byte sequences that are not UTF-8: stray continuation, invalid start bytes, a lead byte
# with a bad continuation, overlong '/', a truncated sequence, an encoded surrogate, a code
# point above U+10FFFF, a 5-byte form.
BAD_UTF8 = (
    b"\x80",
    b"\xff",
    b"\xfe",
    b"\xc3\x28",
    b"\xc0\xaf",
    b"\xe2\x82",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xf8\x88\x80\x80\x80",
)
DEEP = 3000  # deeper than any interpreter recursion limit msgspec guards with
# JSON values (or almost-JSON) that hurt parsers: non-finite numbers, numbers beyond every
# range, lone surrogate escapes, nesting beyond the recursion limit, strings over the limits.
NASTY = (
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"1e400",
    b"-1e400",
    b"1.7976931348623157e309",
    b"4.9e-330",
    b"9" * 400,
    b"-" + b"9" * 30,
    b"18446744073709551616",
    b"1" + b"0" * 5000,
    b"0." + b"1" * 5000,
    b"-0",
    b"1E+2",
    b"null",
    b"true",
    b"[]",
    b"{}",
    b'"\\ud800"',
    b'"\\udc00\\ud800"',
    b'"\\u0000"',
    b'"' + b"x" * 5000 + b'"',
    b"[" * DEEP + b"]" * DEEP,
    b'{"a":' * DEEP + b"1" + b"}" * DEEP,
    b"[" * 40 + b"]" * 40,
    b"01",
    b"+1",
    b"0x10",
    b"'x'",
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
HOLE = "@@hole@@"
DUP = "@@dup@@"


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a JSON document, the root included."""
    found = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            found += _paths(value, (*prefix, index))
    return found


def _with(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    doc = copy.deepcopy(doc)
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return doc


def _dump(doc: Any, hole: bytes = b"") -> bytes:
    # surrogatepass: a lone surrogate escape json.loads let through becomes bad UTF-8 bytes.
    text = json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return text.replace(f'"{HOLE}"'.encode(), hole)


@st.composite
def mutations(draw: st.DrawFn, payload: bytes) -> bytes:
    """One mutation of a valid JSON ``payload``, byte-level or value-level."""
    doc = json.loads(payload)
    kind = draw(
        st.sampled_from(
            [
                "flip", "truncate", "insert", "delete", "bad_utf8", "nasty", "wrong_type",
                "duplicate_key", "drop_key", "oversize",
            ]
        )
    )
    size = len(payload)
    if kind == "flip":
        at = draw(st.integers(0, size - 1))
        bit = draw(st.integers(1, 255))
        return payload[:at] + bytes([payload[at] ^ bit]) + payload[at + 1 :]
    if kind == "truncate":
        return payload[: draw(st.integers(0, size - 1))]
    if kind == "insert":
        at = draw(st.integers(0, size))
        return payload[:at] + draw(st.binary(min_size=1, max_size=8)) + payload[at:]
    if kind == "delete":
        start = draw(st.integers(0, size - 1))
        return payload[:start] + payload[start + draw(st.integers(1, 16)) :]
    if kind == "bad_utf8":
        return _splice_bad_utf8(draw, payload)
    if kind == "oversize":
        return payload + b" " * (MAX_PAYLOAD_BYTES + 1 - size)
    path = draw(st.sampled_from(_paths(doc)))
    if kind == "nasty":
        return _dump(_with(doc, path, HOLE), draw(st.sampled_from(NASTY)))
    if kind == "wrong_type":
        return _dump(_with(doc, path, draw(json_values)))
    objects = [p for p in _paths(doc) if _at(doc, p) and isinstance(_at(doc, p), dict)]
    if not objects:
        return payload
    path = draw(st.sampled_from(objects))
    obj = _at(doc, path)
    key = draw(st.sampled_from(sorted(obj)))
    if kind == "drop_key":
        return _dump(_with(doc, path, {k: v for k, v in obj.items() if k != key}))
    # duplicate_key: the same key twice, with a nasty or a valid value first or last
    extra = draw(st.sampled_from([*NASTY, json.dumps(obj[key]).encode()]))
    first = draw(st.booleans())
    dup = {DUP: DUP, **obj} if first else {**obj, DUP: DUP}
    return _with_duplicate(_with(doc, path, dup), key, extra)


def _with_duplicate(doc: Any, key: str, value: bytes) -> bytes:
    """``doc`` dumped with its ``{DUP: DUP}`` entry turned into ``key: value``."""
    entry = json.dumps(key).encode() + b": " + value
    return _dump(doc).replace(f'"{DUP}": "{DUP}"'.encode(), entry)


def _at(doc: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        doc = doc[step]
    return doc


def _string_positions(payload: bytes) -> list[int]:
    """Offsets inside the strings (keys and values) of valid JSON ``payload`` where bytes can
    be inserted without splitting a character or an escape such as ``\\"`` or ``\\u00e9``."""
    positions: list[int] = []
    i, inside = 0, False
    while i < len(payload):
        byte = payload[i]
        if not inside:
            inside = byte == ord('"')
            i += 1
            if inside:
                positions.append(i)
            continue
        if byte == ord('"'):
            inside = False
            i += 1
            continue
        if byte == ord("\\"):
            i += 6 if payload[i + 1] == ord("u") else 2
        else:  # one UTF-8 character: a lead byte and its continuation bytes
            i += 1
            while i < len(payload) and payload[i] & 0xC0 == 0x80:
                i += 1
        positions.append(i)
    return positions


def _splice_bad_utf8(draw: st.DrawFn, payload: bytes) -> bytes:
    """Insert a non-UTF-8 sequence inside one string (key or value) of ``payload``."""
    at = draw(st.sampled_from(_string_positions(payload) or [0]))
    return payload[:at] + draw(st.sampled_from(BAD_UTF8)) + payload[at:]


@st.composite
def with_bad_utf8(draw: st.DrawFn, payload: bytes) -> bytes:
    return _splice_bad_utf8(draw, payload)


def _outcome(decode: Callable[[bytes], Any], payload: bytes) -> Any:
    """Decode; a PayloadError is a documented answer, any other exception fails the test."""
    try:
        return decode(payload)
    except PayloadError as exc:
        error = exc
    assert error.reason
    return error


def _one_reading_batch(raw: bytes) -> bytes:
    return b'{"v":1,"gw":"g","seq":0,"r":[' + raw + b"]}"


class _Readings(msgspec.Struct):
    r: list[msgspec.Raw]


def _check_partial(payload: bytes) -> None:
    """The invariants of decode_batch_partial for any payload."""
    whole = _outcome(decode_batch, payload)
    part = _outcome(decode_batch_partial, payload)
    if isinstance(whole, Batch):
        assert part == DecodedBatch(batch=whole, rejected=[])
        assert decode_batch(encode_batch(whole)) == whole
        return
    if isinstance(whole, (PayloadTooLarge, UnsupportedVersion)):
        assert type(part) is type(whole)
        return
    if isinstance(part, PayloadError):
        return
    # Refused whole, kept in part: at least one reading is refused, every reading accounted for.
    assert isinstance(part, DecodedBatch)
    assert part.rejected
    indices = [x.index for x in part.rejected]
    assert indices == sorted(set(indices))
    total = len(msgspec.json.decode(payload, type=_Readings).r)
    assert len(part.batch.readings) + len(part.rejected) == total
    assert indices[0] >= 0
    assert indices[-1] < total
    for refused in part.rejected:
        assert refused.reason
        assert refused.path.startswith(f"$.r[{refused.index}]")
        # refused: bad on its own too
        assert isinstance(_outcome(decode_batch, _one_reading_batch(refused.raw)), PayloadError)
    for kept in part.batch.readings:  # kept: good on its own too
        single = Batch(gateway=part.batch.gateway, seq=part.batch.seq, readings=[kept])
        assert decode_batch(encode_batch(single)) == single


# -- arbitrary bytes and mutated batches ---------------------------------------------------


@FAST
@given(st.binary(max_size=512))
def test_arbitrary_bytes_raise_only_payload_errors(payload: bytes) -> None:
    _check_partial(payload)


@FAST
@given(st.data())
def test_mutated_batches_raise_only_payload_errors(data: st.DataObject) -> None:
    valid = encode_batch(data.draw(seed_batches))
    _check_partial(data.draw(mutations(valid)))


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_mutated_batches_from_a_prefix_stay_documented(data: st.DataObject) -> None:
    """Two mutations in a row reach states one cannot (a flip inside spliced bytes, ...)."""
    valid = encode_batch(data.draw(seed_batches))
    once = data.draw(mutations(valid))
    try:
        json.loads(once)
    except (ValueError, RecursionError):  # not JSON to the stdlib either: nothing to walk
        _check_partial(once)
        return
    _check_partial(data.draw(mutations(once)))


# -- exactly the bad readings are refused, the good ones around them kept ------------------


@st.composite
def bad_readings(draw: st.DrawFn, reading: Reading) -> bytes:
    """A reading made invalid in one way that leaves the batch around it well-formed JSON."""
    raw = msgspec.json.encode(reading)
    doc = json.loads(raw)
    kind = draw(st.sampled_from(["bad_utf8", "null_or_list", "huge", "long_string", "drop",
                                 "duplicate", "reserved", "nested"]))
    values = [p for p in _paths(doc) if p]
    if kind == "bad_utf8":
        return _splice_bad_utf8(draw, raw)
    if kind == "null_or_list":
        hole = draw(st.sampled_from([b"null", b"[]", b"[1]", b'["x", {}]']))
        return _dump(_with(doc, draw(st.sampled_from(values)), HOLE), hole)
    if kind == "huge":
        numbers = [p for p in values if p[0] == "t" or (p[0] == "f" and len(p) == 2)]
        hole = draw(st.sampled_from([b"1e400", b"-1e400", b"9" * 400, b"-" + b"9" * 400]))
        return _dump(_with(doc, draw(st.sampled_from(numbers)), HOLE), hole)
    if kind == "long_string":
        return _dump(_with(doc, draw(st.sampled_from(values)), "x" * 2000))
    if kind == "drop":
        key = draw(st.sampled_from(["d", "m", "t", "f"]))
        return _dump({k: v for k, v in doc.items() if k != key})
    if kind == "duplicate":  # a bad value for a known key, before or after the good one
        key = draw(st.sampled_from(sorted(doc)))
        body = {DUP: DUP, **doc} if draw(st.booleans()) else {**doc, DUP: DUP}
        return _with_duplicate(body, key, b"null")
    if kind == "reserved":
        return _dump({**doc, "f": {**doc["f"], draw(st.sampled_from(["time", "quality"])): 1}})
    # nested: deep enough to be wrong, shallow enough to stay under the recursion limit
    return _dump(_with(doc, draw(st.sampled_from(values)), HOLE), b"[" * 50 + b"]" * 50)


@FAST
@given(st.data())
def test_partial_refuses_exactly_the_bad_readings_and_keeps_the_rest(data: st.DataObject) -> None:
    good = data.draw(st.lists(seed_readings, min_size=2, max_size=6))
    bad = data.draw(st.sets(st.integers(0, len(good) - 1), min_size=1, max_size=len(good)))
    raws = [
        data.draw(bad_readings(r)) if i in bad else msgspec.json.encode(r)
        for i, r in enumerate(good)
    ]
    payload = b'{"v":1,"gw":"cabinet-017","seq":9,"r":[' + b",".join(raws) + b"]}"

    with_errors = _outcome(decode_batch, payload)
    result = decode_batch_partial(payload)

    assert isinstance(with_errors, (InvalidPayload, MalformedPayload))
    assert [x.index for x in result.rejected] == sorted(bad)
    assert [x.raw for x in result.rejected] == [raws[i] for i in sorted(bad)]
    assert all(x.path.startswith(f"$.r[{x.index}]") and x.reason for x in result.rejected)
    assert result.batch.readings == [r for i, r in enumerate(good) if i not in bad]
    assert (result.batch.gateway, result.batch.seq) == ("cabinet-017", 9)


@FAST
@given(st.data())
def test_bad_utf8_in_a_reading_is_refused_by_index_whatever_msgspec_says(
    data: st.DataObject,
) -> None:
    good = data.draw(st.lists(seed_readings, min_size=3, max_size=5))
    index = data.draw(st.integers(0, len(good) - 1))
    raws = [msgspec.json.encode(r) for r in good]
    raws[index] = data.draw(with_bad_utf8(raws[index]))
    payload = b'{"v":1,"gw":"cabinet-017","seq":9,"r":[' + b",".join(raws) + b"]}"

    result = decode_batch_partial(payload)

    assert [(x.index, x.path) for x in result.rejected] == [(index, f"$.r[{index}]")]
    assert "UTF-8" in result.rejected[0].reason
    assert result.batch.readings == good[:index] + good[index + 1 :]
    with pytest.raises(MalformedPayload, match="UTF-8"):
        decode_batch(payload)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_bad_utf8_outside_the_readings_refuses_the_batch_whole(data: st.DataObject) -> None:
    """Unknown envelope keys are ignored, but their bytes must still be UTF-8."""
    batch = data.draw(seed_batches)
    bad_reading = data.draw(st.booleans())  # with a bad reading too, the envelope still counts
    doc = json.loads(encode_batch(batch))
    if bad_reading:
        doc["r"][0]["t"] = "noon"
    bad = data.draw(st.sampled_from(BAD_UTF8))
    payload = _dump({**doc, "note": HOLE}, b'"' + bad + b'"')
    with pytest.raises(MalformedPayload, match="UTF-8"):
        decode_batch(payload)
    with pytest.raises(MalformedPayload, match="UTF-8"):
        decode_batch_partial(payload)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_what_cannot_be_split_into_readings_is_refused_whole(data: st.DataObject) -> None:
    """NaN, nesting past the recursion limit and lone surrogate escapes break the JSON
    itself, so no reading can be told from another: the batch is malformed as a whole."""
    good = data.draw(st.lists(seed_readings, min_size=2, max_size=4))
    index = data.draw(st.integers(0, len(good) - 1))
    doc = json.loads(msgspec.json.encode(good[index]))
    hole = data.draw(
        st.sampled_from(
            [b"NaN", b"Infinity", b'"\\ud800"', b"[" * DEEP + b"]" * DEEP,
             b'{"a":' * DEEP + b"1" + b"}" * DEEP]
        )
    )
    raws = [msgspec.json.encode(r) for r in good]
    raws[index] = _dump({**doc, "x": HOLE}, hole)
    payload = b'{"v":1,"gw":"cabinet-017","seq":9,"r":[' + b",".join(raws) + b"]}"
    with pytest.raises(MalformedPayload):
        decode_batch(payload)
    with pytest.raises(MalformedPayload):
        decode_batch_partial(payload)


# -- control-plane messages -----------------------------------------------------------------

SAMPLES: list[msgspec.Struct] = [
    Birth(
        gw="cabinet-017",
        ts=TS,
        agent="edge-agent/1.0",
        config_version=3,
        location=Location(lat=59.91, lon=10.75, alt=12.0, area="sentrum"),
        devices=[
            DeviceInfo(
                id="loop-3",
                kind="inductive-loop",
                measurements={"TrafficFlowObserved": {"intensity": "1/h"}},
                location=Location(lat=59.9, lon=10.7),
                meta={"firmware": "1.2.3", "unit": "7"},
            )
        ],
    ),
    Death(gw="cabinet-017", ts=TS, reason="shutdown"),
    Health(
        gw="cabinet-017",
        ts=TS,
        uptime_s=12.5,
        next_seq=9,
        spool=SpoolHealth(
            batches=2,
            readings=40,
            bytes=4096,
            budget_bytes=1 << 20,
            oldest_age_s=3.5,
            dropped_batches=0,
            dropped_readings=0,
        ),
        dropped={"deadband": {"traffic": 4}},
        links={"serial0": "up"},
        cpu_percent=3.5,
        rss_bytes=50_000_000,
    ),
    ConfigDesired(version=4, config={"inputs": [{"type": "serial", "port": "/dev/ttyUSB0"}]}),
    ConfigReported(
        gw="cabinet-017", ts=TS, version=4, status="rejected", reason="bad", running_version=3
    ),
    CommandRequest(cmd="reboot", args={"delay_s": 5, "force": True, "why": ["a", 1.5]}),
    CommandResponse(ok=False, result={"took_s": 0.5}, error="busy"),
]
KINDS = [type(s) for s in SAMPLES]


def _check_message(payload: bytes, kind: type[msgspec.Struct]) -> None:
    result = _outcome(lambda p: decode_message(p, kind), payload)
    assert isinstance(result, (kind, PayloadError))
    status = _outcome(decode_status, payload)
    assert isinstance(status, (Birth, Death, PayloadError))


def test_the_message_samples_are_valid() -> None:
    for sample in SAMPLES:
        assert decode_message(encode_message(sample), type(sample)) == sample


@FAST
@given(st.binary(max_size=512), st.sampled_from(KINDS))
def test_arbitrary_bytes_as_messages_raise_only_payload_errors(
    payload: bytes, kind: type[msgspec.Struct]
) -> None:
    _check_message(payload, kind)


@FAST
@given(st.data())
def test_mutated_messages_raise_only_payload_errors(data: st.DataObject) -> None:
    sample = data.draw(st.sampled_from(SAMPLES))
    payload = data.draw(mutations(encode_message(sample)))
    _check_message(payload, type(sample))
    _check_message(payload, data.draw(st.sampled_from(KINDS)))


# -- topics ---------------------------------------------------------------------------------


@FAST
@given(st.text(max_size=80), st.text(max_size=20))
def test_topic_parsing_raises_only_topic_errors(topic: str, root: str) -> None:
    topics = Topics("city/oslo")
    for text in (topic, f"city/oslo/v1/{topic}", f"city/oslo/v1/gw-1/{topic}"):
        try:
            gateway, kind = topics.parse(text)
        except TopicError:
            continue
        assert isinstance(kind, TopicKind)
        assert topics.parse(topics.telemetry(gateway))[0] == gateway
    with contextlib.suppress(TopicError):
        Topics(root)


@FAST
@given(st.text(max_size=40), st.sampled_from(list(TopicKind)))
def test_topic_builders_raise_only_topic_errors(name: str, kind: TopicKind) -> None:
    topics = Topics()
    builders: list[Callable[[], str]] = [
        lambda: topics.telemetry(name),
        lambda: topics.status(name),
        lambda: topics.health(name),
        lambda: topics.config_desired(name),
        lambda: topics.config_reported(name),
        lambda: topics.command(name),
        lambda: topics.command_response("gw-1", name),
        lambda: topics.command_response(name, "client-1"),
        lambda: topics.deadletter(name),
        lambda: topics.shared(name, kind),
    ]
    for build in builders:
        try:
            built = build()
        except TopicError:
            continue
        if "$share" not in built and "_sys" not in built:
            assert topics.parse(built)[0] in (name, "gw-1")
