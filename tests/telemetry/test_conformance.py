"""Conformance to the vocabulary before storage: coercions that lose nothing, refusals with
a reason (telemetry._conformance)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry import (
    MEASUREMENTS,
    Conformer,
    LineProtocolEncoder,
    Nonconformity,
    Reading,
    decode_batch_partial,
)
from tests.telemetry.strategies import readings

NOW = 1_732_780_800 * 10**9


def reading(m: str = "TrafficFlowObserved", ts: int = NOW, **fields: object) -> Reading:
    return Reading(device="d-1", measurement=m, ts=ts, fields=fields or {"intensity": 1.0})  # type: ignore[arg-type]


def conform(r: Reading, skew: float | None = 300.0) -> Reading | Nonconformity:
    return Conformer(max_clock_skew_s=skew).conform(r, NOW)


def test_a_conforming_reading_is_returned_as_it_is() -> None:
    r = reading(intensity=540.0, vehicleCount=12)
    assert conform(r) is r


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"intensity": 540}, {"intensity": 540.0}),  # int -> float field
        ({"vehicleCount": 12.0}, {"vehicleCount": 12}),  # integral float -> int field
        ({"intensity": 2**53}, {"intensity": float(2**53)}),
        ({"mood": 3, "intensity": 1}, {"mood": 3, "intensity": 1.0}),  # undeclared: as sent
    ],
)
def test_lossless_coercions(fields: dict[str, object], expected: dict[str, object]) -> None:
    out = conform(reading(**fields))
    assert isinstance(out, Reading)
    assert out.fields == expected
    assert [type(v) for v in out.fields.values()] == [type(v) for v in expected.values()]


@pytest.mark.parametrize(
    "fields",
    [
        {"intensity": "x"},
        {"intensity": True},
        {"vehicleCount": 12.5},
        {"vehicleCount": True},
        {"vehicleCount": "12"},
        {"vehicleCount": 1e300},
        {"intensity": 2**53 + 1},  # not exact in float64
    ],
)
def test_other_types_in_declared_fields_are_refused(fields: dict[str, object]) -> None:
    out = conform(reading(**fields))
    assert isinstance(out, Nonconformity)
    assert out.reason == "field_type"
    assert out.path == f"$.f.{next(iter(fields))}"


def test_string_fields_of_the_vocabulary_take_only_strings() -> None:
    assert isinstance(conform(reading("Vehicle", routeId="31")), Reading)
    out = conform(reading("Vehicle", routeId=31))
    assert isinstance(out, Nonconformity)
    assert out.reason == "field_type"


@pytest.mark.parametrize("name", ["ingest_batch", "ingest_deadletter", "ingest_anything"])
def test_the_platforms_own_measurements_are_refused(name: str) -> None:
    out = conform(reading(name, seq="x"))
    assert isinstance(out, Nonconformity)
    assert (out.reason, out.path) == ("reserved_measurement", "$.m")


def test_timestamps_beyond_the_clock_skew_allowance_are_refused() -> None:
    assert isinstance(conform(reading(ts=NOW + 300 * 10**9)), Reading)
    out = conform(reading(ts=NOW + 300 * 10**9 + 1))
    assert isinstance(out, Nonconformity)
    assert (out.reason, out.path) == ("future_timestamp", "$.t")
    assert isinstance(conform(reading(ts=NOW + 86400 * 10**9), skew=None), Reading)
    assert isinstance(conform(reading(ts=NOW - 86400 * 10**9)), Reading)  # the past is fine


@pytest.mark.parametrize("text", ["a\nb", "x\n", "\r", "\x00", "\x7f"])
def test_control_characters_in_strings_and_tags_are_refused(text: str) -> None:
    out = conform(reading("Custom", note=text))
    assert isinstance(out, Nonconformity)
    assert out.reason == "control_character"
    tagged = Reading(device="d", measurement="Custom", ts=NOW, fields={"v": 1.0},
                     tags={"lane": text})
    out = conform(tagged)
    assert isinstance(out, Nonconformity)
    assert out.reason == "control_character"
    assert isinstance(conform(reading("Custom", note="tab\tis fine")), Reading)


def test_a_string_ending_in_a_newline_fails_the_contract_itself() -> None:
    """``$`` matches before a trailing newline: the contract's patterns end in ``\\Z``."""
    payload = (
        b'{"v":1,"gw":"g","seq":1,"r":[{"d":"d","m":"Vehicle","t":' + str(NOW).encode()
        + b',"f":{"routeId":"31\\n"}},{"d":"d","m":"Vehicle","t":' + str(NOW).encode()
        + b',"f":{"routeId":"31"}}]}'
    )
    decoded = decode_batch_partial(payload)
    assert [r.index for r in decoded.rejected] == [0]
    assert len(decoded.batch.readings) == 1


@given(st.lists(readings(), min_size=1, max_size=10))
@settings(max_examples=80, deadline=None)
def test_what_conforms_matches_the_vocabulary_and_is_otherwise_unchanged(
    batch: list[Reading],
) -> None:
    good, refused = Conformer(max_clock_skew_s=None).conform_all(batch, NOW)
    assert len(good) + len(refused) == len(batch)
    refused_at = {i for i, _ in refused}
    for r, original in zip(good, [b for i, b in enumerate(batch) if i not in refused_at],
                           strict=True):
        assert (r.measurement, r.ts, r.tags, list(r.fields)) == (
            original.measurement, original.ts, original.tags, list(original.fields)
        )
        spec = MEASUREMENTS.get(r.measurement)
        for name, value in r.fields.items():
            declared = spec.fields.get(name) if spec else None
            if declared is None:
                assert value == original.fields[name]
                continue
            want = {"float": float, "int": int, "bool": bool, "string": str}[declared.type]
            assert type(value) is want
            assert value == original.fields[name]


@given(st.lists(readings(), min_size=1, max_size=10))
@settings(max_examples=60, deadline=None)
def test_line_i_is_always_reading_i(batch: list[Reading]) -> None:
    """Even for readings built in code with newlines in values (never validated)."""
    poisoned = [
        Reading(device=r.device, measurement=r.measurement, ts=r.ts,
                fields={**r.fields, "note": "a\nb"}, tags=r.tags) if i % 2 else r
        for i, r in enumerate(batch)
    ]
    encoder = LineProtocolEncoder()
    lines = encoder.line_list("gw", poisoned)
    assert len(lines) == len(poisoned)
    for line, r in zip(lines, poisoned, strict=True):
        assert line == encoder.encode("gw", [r])[:-1]
