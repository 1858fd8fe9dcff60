"""The batch codec: round trips, and one typed error for every kind of malformed payload."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given, settings

from telemetry import (
    MAX_PAYLOAD_BYTES,
    MAX_READINGS,
    TS_MIN_NS,
    Batch,
    InvalidPayload,
    MalformedPayload,
    PayloadError,
    PayloadTooLarge,
    Reading,
    UnsupportedVersion,
    decode_batch,
    decode_batch_partial,
    encode_batch,
)
from tests.telemetry.strategies import batches

TS = TS_MIN_NS + 10**18


def reading(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "d": "loop-3",
        "m": "TrafficFlowObserved",
        "t": TS,
        "f": {"intensity": 540.0, "vehicleCount": 9},
        "g": {"lane": "1"},
    }
    base.update(over)
    return base


def payload(readings: list[dict[str, object]] | None = None, **over: object) -> bytes:
    body: dict[str, object] = {"v": 1, "gw": "cabinet-017", "seq": 7, "r": readings or [reading()]}
    body.update(over)
    return json.dumps(body).encode()


def test_round_trip_keeps_every_attribute() -> None:
    batch = Batch(
        gateway="cabinet-017",
        seq=42,
        readings=[
            Reading(
                device="loop-3",
                measurement="TrafficFlowObserved",
                ts=TS,
                fields={"intensity": 540.0, "vehicleCount": 9, "congested": True, "note": "ok"},
                tags={"lane": "1"},
                quality="uncertain",
                clock="gateway",
            )
        ],
    )
    assert decode_batch(encode_batch(batch)) == batch


def test_wire_form_uses_short_keys_and_omits_defaults() -> None:
    batch = Batch(
        gateway="g1",
        seq=1,
        readings=[Reading(device="d", measurement="M", ts=TS, fields={"x": 1.0})],
    )
    assert json.loads(encode_batch(batch)) == {
        "v": 1,
        "gw": "g1",
        "seq": 1,
        "r": [{"d": "d", "m": "M", "t": TS, "f": {"x": 1.0}}],
    }


@given(batches())
@settings(max_examples=100)
def test_any_valid_batch_round_trips(batch: Batch) -> None:
    assert decode_batch(encode_batch(batch)) == batch


def test_integer_and_float_fields_keep_their_json_type() -> None:
    batch = decode_batch(payload([reading(f={"a": 12, "b": 12.0, "c": 1e300})]))
    fields = batch.readings[0].fields
    assert type(fields["a"]) is int
    assert type(fields["b"]) is float
    assert fields["c"] == 1e300


# -- the malformed payloads the issue names, each with its typed error -------------------


def test_truncated_json_is_malformed() -> None:
    good = payload()
    with pytest.raises(MalformedPayload, match="truncated"):
        decode_batch(good[: len(good) // 2])


def test_bad_utf8_is_malformed() -> None:
    bad = payload().replace(b"cabinet-017", b"cabinet-\xff\xfe")
    with pytest.raises(MalformedPayload, match="UTF-8"):
        decode_batch(bad)


def test_bad_utf8_in_one_reading_spares_the_others() -> None:
    body = payload([reading(t=TS + 1), reading(d="x"), reading(t=TS + 2)])
    body = body.replace(b'"d": "x"', b'"d": "\xc3\x28"')
    result = decode_batch_partial(body)
    assert [r.ts for r in result.batch.readings] == [TS + 1, TS + 2]
    assert result.rejected[0].index == 1
    assert "UTF-8" in result.rejected[0].reason


def test_binary_garbage_is_malformed() -> None:
    with pytest.raises(MalformedPayload):
        decode_batch(b"\x00\x01\x02garbage")


def test_empty_payload_is_malformed() -> None:
    with pytest.raises(MalformedPayload):
        decode_batch(b"")


def test_oversize_payload_is_refused_before_parsing() -> None:
    big = b"{" + b" " * MAX_PAYLOAD_BYTES + b"}"
    with pytest.raises(PayloadTooLarge) as info:
        decode_batch(big)
    assert info.value.size == len(big)
    assert info.value.limit == MAX_PAYLOAD_BYTES


def test_encoder_refuses_a_batch_over_the_size_limit() -> None:
    fat = Reading(device="d", measurement="M", ts=TS, fields={"s": "x" * 1000})
    with pytest.raises(PayloadTooLarge):
        encode_batch(Batch(gateway="g", seq=1, readings=[fat] * 300))


@pytest.mark.parametrize("version", [0, 2, 99, "1", None])
def test_unknown_version_is_named(version: object) -> None:
    with pytest.raises(UnsupportedVersion) as info:
        decode_batch(payload(v=version))
    assert info.value.version == version
    assert info.value.path == "$.v"


def test_future_version_with_a_different_shape_is_still_unsupported_version() -> None:
    with pytest.raises(UnsupportedVersion):
        decode_batch(json.dumps({"v": 2, "gateway": "x", "items": []}).encode())


@pytest.mark.parametrize(
    ("mutation", "path"),
    [
        ({"t": "yesterday"}, "$.r[0].t"),
        ({"t": 1.5e18}, "$.r[0].t"),
        ({"t": 0}, "$.r[0].t"),  # 1970: a device whose clock was never set
        ({"t": 5_000_000_000_000_000_000}, "$.r[0].t"),
        ({"f": {}}, "$.r[0].f"),
        # msgspec names a dict value "[...]": the reading and the mapping are still exact
        ({"f": {"x": [1, 2]}}, "$.r[0].f[...]"),
        ({"f": {"x": None}}, "$.r[0].f[...]"),
        ({"f": {"x": 2**64}}, "$.r[0].f[...]"),
        ({"f": {"x": "line\nbreak"}}, "$.r[0].f[...]"),
        ({"g": {"lane": 1}}, "$.r[0].g[...]"),
        ({"g": {"lane": ""}}, "$.r[0].g[...]"),
        ({"q": "excellent"}, "$.r[0].q"),
        ({"d": ""}, "$.r[0].d"),
        ({"d": 17}, "$.r[0].d"),
        ({"m": None}, "$.r[0].m"),
    ],
)
def test_wrong_types_and_ranges_name_the_offending_key(
    mutation: dict[str, object], path: str
) -> None:
    with pytest.raises(InvalidPayload) as info:
        decode_batch(payload([reading(), reading(**mutation)]))
    # the bad reading is the second one
    assert info.value.path == path.replace("r[0]", "r[1]")


@pytest.mark.parametrize(
    ("mutation", "path", "reason"),
    [
        ({"d": "a/b"}, "$.r[0].d", "must match"),
        ({"d": "+"}, "$.r[0].d", "must match"),
        ({"m": "Traffic Flow"}, "$.r[0].m", "must match"),
        ({"m": "_internal"}, "$.r[0].m", "must match"),
        ({"f": {"time": 1}}, "$.r[0].f.time", "reserved"),
        ({"f": {"quality": 1}}, "$.r[0].f.quality", "reserved"),
        ({"f": {"bad-name": 1}}, "$.r[0].f", "must match"),
        ({"g": {"device": "x"}}, "$.r[0].g.device", "reserved"),
        ({"g": {"lane": "a\\b"}}, "$.r[0].g.lane", "backslash"),
        ({"g": {"lane": "a\tb"}}, "$.r[0].g.lane", "control"),
        ({"g": {"intensity": "x"}}, "$.r[0].g.intensity", "both a tag key and a field"),
    ],
)
def test_names_are_checked_with_a_reason(
    mutation: dict[str, object], path: str, reason: str
) -> None:
    with pytest.raises(InvalidPayload, match=reason) as info:
        decode_batch(payload([reading(**mutation)]))
    assert info.value.path == path


@pytest.mark.parametrize(
    ("envelope", "path"),
    [
        ({"gw": "a/b"}, "$.gw"),
        ({"gw": None}, "$.gw"),
        ({"seq": -1}, "$.seq"),
        ({"seq": "7"}, "$.seq"),
        ({"r": []}, "$.r"),
        ({"r": "nope"}, "$.r"),
    ],
)
def test_envelope_errors_name_the_key(envelope: dict[str, object], path: str) -> None:
    with pytest.raises(InvalidPayload) as info:
        decode_batch(payload(**envelope))
    assert info.value.path == path


def test_a_number_beyond_float_range_is_refused() -> None:
    body = payload([reading(f={"x": 7.0})]).replace(b'"x": 7.0', b'"x": 1e309')
    with pytest.raises(InvalidPayload, match="out of range") as info:
        decode_batch(body)
    assert info.value.path == "$.r[0].f[...]"


def test_nan_and_infinity_are_not_json() -> None:
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        body = payload([reading(f={"x": 7.0})]).replace(b"7.0", literal)
        with pytest.raises(MalformedPayload):
            decode_batch(body)


def test_too_many_readings_is_invalid() -> None:
    small = {"d": "d", "m": "M", "t": TS, "f": {"x": 1}}
    with pytest.raises(InvalidPayload, match=str(MAX_READINGS)):
        decode_batch(payload([small] * (MAX_READINGS + 1)))


def test_missing_key_is_named() -> None:
    bad = reading()
    del bad["t"]
    with pytest.raises(InvalidPayload, match="missing required field `t`"):
        decode_batch(payload([bad]))


def test_unknown_keys_are_ignored_for_forward_compatibility() -> None:
    batch = decode_batch(payload([reading(extra="later")], sent_at=123))
    assert batch.readings[0].device == "loop-3"


def test_every_payload_error_is_a_payload_error() -> None:
    for bad in (b"{", payload(v=9), payload(seq=-1), b"x" * (MAX_PAYLOAD_BYTES + 1)):
        with pytest.raises(PayloadError):
            decode_batch(bad)


# -- partial decoding for the platform's intake ---------------------------------------------


def test_partial_keeps_good_readings_and_lists_the_bad_with_reasons() -> None:
    body = payload(
        [
            reading(t=TS + 1),
            reading(t="noon"),
            reading(t=TS + 2),
            reading(f={"time": 3}),
            reading(d="no/slash"),
            reading(t=TS + 3),
        ]
    )
    result = decode_batch_partial(body)
    assert [r.ts for r in result.batch.readings] == [TS + 1, TS + 2, TS + 3]
    assert result.batch.seq == 7
    assert [(x.index, x.path) for x in result.rejected] == [
        (1, "$.r[1].t"),
        (3, "$.r[3].f.time"),
        (4, "$.r[4].d"),
    ]
    assert all(x.reason for x in result.rejected)
    assert msgspec.json.decode(result.rejected[0].raw)["t"] == "noon"
    # good + rejected accounts for every reading: nothing dropped silently
    assert len(result.batch.readings) + len(result.rejected) == 6


def test_partial_with_all_readings_bad_returns_an_empty_batch() -> None:
    result = decode_batch_partial(payload([reading(t=1), reading(f={})]))
    assert result.batch.readings == []
    assert len(result.rejected) == 2


def test_partial_of_a_clean_batch_has_no_rejects() -> None:
    result = decode_batch_partial(payload())
    assert result.rejected == []
    assert len(result.batch.readings) == 1


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (b'{"v":1,"gw":"g","seq":1,"r":[{"d":', MalformedPayload),
        (payload(v=3), UnsupportedVersion),
        (payload(gw="a/b"), InvalidPayload),
        (payload(seq=-5), InvalidPayload),
        (payload(r=[]), InvalidPayload),
        (b"[" * (MAX_PAYLOAD_BYTES + 1), PayloadTooLarge),
    ],
)
def test_partial_refuses_a_broken_envelope_whole(bad: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        decode_batch_partial(bad)


def test_a_tag_key_that_is_also_a_field_is_refused_however_familiar_both_names_are() -> None:
    """The names' caches must not let a tag/field clash through: each name alone was seen
    (``lane`` as a field in one reading, ``lane=1`` as a tag in another), then both at once."""
    as_field = reading(f={"lane": 1.0}, g={})
    as_tag = reading(f={"intensity": 540.0}, g={"lane": "1"})
    decode_batch(payload([as_field, as_tag]))
    both = reading(f={"lane": 1.0}, g={"lane": "1"})
    with pytest.raises(InvalidPayload, match="both a tag key and a field name"):
        decode_batch(payload([both]))
    partial = decode_batch_partial(payload([as_tag, both]))
    assert [r.index for r in partial.rejected] == [1]
    assert "both a tag key and a field name" in partial.rejected[0].reason
