"""Line protocol: checked against an independent parser, and the escaping rules one by one."""

from __future__ import annotations

import math

import line_protocol_parser
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry import TS_MIN_NS, LineProtocolEncoder, Reading
from tests.telemetry.strategies import ids, readings

# The independent parser refuses subnormal floats (InfluxDB accepts them: the influxd
# round-trip test covers them), so the parser tests draw normal floats only.
normal = readings(subnormal=False)

TS = TS_MIN_NS + 123


def encode_one(gateway: str, r: Reading, **kw: object) -> str:
    return LineProtocolEncoder(**kw).encode(gateway, [r]).decode()  # type: ignore[arg-type]


@given(gateway=ids, reading=normal)
@settings(max_examples=200)
def test_every_valid_reading_parses_back_identically(gateway: str, reading: Reading) -> None:
    line = encode_one(gateway, reading)
    assert line.endswith("\n")
    assert line.count("\n") == 1
    parsed = line_protocol_parser.parse_line(line[:-1])
    assert parsed["measurement"] == reading.measurement
    assert parsed["time"] == reading.ts
    assert parsed["tags"] == {**reading.tags, "gateway": gateway, "device": reading.device}
    expected = {**reading.fields, "quality": reading.quality}
    if reading.clock != "device":
        expected["clock"] = reading.clock
    assert set(parsed["fields"]) == set(expected)
    for key, value in expected.items():
        got = parsed["fields"][key]
        if isinstance(value, float):
            assert isinstance(got, float)
            assert got == value or (math.isclose(got, value, rel_tol=1e-15))
        else:
            assert type(got) is type(value)
            assert got == value


@given(st.lists(normal, min_size=1, max_size=20))
def test_a_body_has_one_line_per_reading_in_order(batch: list[Reading]) -> None:
    body = LineProtocolEncoder().encode("gw-1", batch).decode()
    lines = body.split("\n")
    assert lines[-1] == ""
    assert [line_protocol_parser.parse_line(x)["time"] for x in lines[:-1]] == [r.ts for r in batch]


def test_types_are_written_with_their_markers() -> None:
    r = Reading(
        device="d",
        measurement="Custom",
        ts=TS,
        fields={"f": 1.5, "i": 3, "b": True, "s": 'say "hi" \\o/'},
    )
    assert encode_one("g", r) == (
        f'Custom,device=d,gateway=g f=1.5,i=3i,b=True,s="say \\"hi\\" \\\\o/",quality="good" {TS}\n'
    )


def test_tags_are_sorted_and_escaped() -> None:
    r = Reading(
        device="d1",
        measurement="TrafficFlowObserved",
        ts=TS,
        fields={"intensity": 1.0},
        tags={"zone": "old town, east", "lane": "a=b"},
    )
    assert encode_one("g", r).startswith(
        r"TrafficFlowObserved,device=d1,gateway=g,lane=a\=b,zone=old\ town\,\ east "
    )


def test_declared_float_fields_stay_float_when_sent_as_integers() -> None:
    r = Reading(
        device="d",
        measurement="TrafficFlowObserved",
        ts=TS,
        fields={"intensity": 12, "vehicleCount": 12},
    )
    parsed = line_protocol_parser.parse_line(encode_one("g", r)[:-1])
    assert parsed["fields"]["intensity"] == 12.0
    assert isinstance(parsed["fields"]["intensity"], float)
    assert parsed["fields"]["vehicleCount"] == 12
    assert isinstance(parsed["fields"]["vehicleCount"], int)


def test_extreme_floats_use_exponent_notation_that_parses() -> None:
    r = Reading(device="d", measurement="M", ts=TS, fields={"a": 1e300, "b": -3e-308, "c": -0.0})
    line = encode_one("g", r)
    assert "a=1e300,b=-3e-308,c=-0.0," in line
    parsed = line_protocol_parser.parse_line(line[:-1])
    assert parsed["fields"]["a"] == 1e300
    assert parsed["fields"]["b"] == -3e-308


def test_extra_tags_join_the_tag_set() -> None:
    r = Reading(device="d", measurement="M", ts=TS, fields={"a": 1.0})
    line = encode_one("g", r, extra_tags={"site": "north"})
    assert line.startswith("M,device=d,gateway=g,site=north ")


def test_caches_do_not_mix_gateways_or_value_types() -> None:
    enc = LineProtocolEncoder()
    a = Reading(device="d", measurement="M", ts=TS, fields={"x": 1})
    b = Reading(device="d", measurement="M", ts=TS, fields={"x": 1.0})
    body = enc.encode("g1", [a, b]).decode() + enc.encode("g2", [a]).decode()
    assert body.splitlines() == [
        f'M,device=d,gateway=g1 x=1i,quality="good" {TS}',
        f'M,device=d,gateway=g1 x=1.0,quality="good" {TS}',
        f'M,device=d,gateway=g2 x=1i,quality="good" {TS}',
    ]


def test_percent_signs_survive_the_body_template() -> None:
    r1 = Reading(device="d", measurement="M", ts=TS, fields={"x": 1.5}, tags={"zone": "50%"})
    r2 = Reading(device="d", measurement="M", ts=TS + 1, fields={"s": "100% %s %d"})
    lines = LineProtocolEncoder().lines("g", [r1, r2])
    assert lines == [
        f'M,device=d,gateway=g,zone=50% x=1.5,quality="good" {TS}\n',
        f'M,device=d,gateway=g s="100% %s %d",quality="good" {TS + 1}\n',
    ]


def test_empty_input_gives_an_empty_body() -> None:
    assert LineProtocolEncoder().encode("g", []) == b""
    assert LineProtocolEncoder().lines("g", []) == []
