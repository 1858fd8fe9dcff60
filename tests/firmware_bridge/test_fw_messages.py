"""Firmware message payloads and the frame-to-reading session."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge import (
    Ack,
    Channel,
    CommandResult,
    FirmwareSession,
    Frame,
    Hello,
    Identify,
    Message,
    MessageType,
    PayloadError,
    Readings,
    Reboot,
    ResultStatus,
    SetSampleInterval,
    TimeSync,
    ValueType,
    decode_message,
    encode_message,
)

GATEWAY_NOW = 1_800_000_000_000_000_000
name_st = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,20}", fullmatch=True)


def _value(vt: ValueType) -> st.SearchStrategy[float | int | bool]:
    return {
        ValueType.F32: st.floats(width=32, allow_nan=False, allow_infinity=False),
        ValueType.F64: st.floats(allow_nan=False, allow_infinity=False),
        ValueType.I32: st.integers(-(2**31), 2**31 - 1),
        ValueType.U32: st.integers(0, 2**32 - 1),
        ValueType.BOOL: st.booleans(),
    }[vt]


entry_st = st.sampled_from(list(ValueType)).flatmap(
    lambda vt: st.tuples(st.integers(0, 255), st.just(vt), _value(vt))
)
channel_st = st.builds(
    Channel,
    index=st.integers(0, 255),
    value_type=st.sampled_from(list(ValueType)),
    measurement=name_st,
    field=name_st,
    unit=st.text(max_size=10),
    tags=st.dictionaries(name_st, st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True), max_size=3),
)
message_st: st.SearchStrategy[Message] = st.one_of(
    st.builds(
        Hello,
        firmware_version=st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255)),
        has_clock=st.booleans(),
        sample_interval_ms=st.integers(0, 2**32 - 1),
        channels=st.lists(channel_st, max_size=6).map(tuple),
    ),
    st.builds(
        Readings,
        ts_ms=st.integers(0, 2**64 - 1),
        values=st.lists(entry_st, max_size=20).map(tuple),
    ),
    st.builds(Ack, ref_seq=st.integers(0, 0xFFFF)),
    st.builds(SetSampleInterval, interval_ms=st.integers(0, 2**32 - 1)),
    st.builds(TimeSync, unix_ms=st.integers(0, 2**64 - 1)),
    st.just(Reboot()),
    st.just(Identify()),
    st.builds(
        CommandResult,
        ref_seq=st.integers(0, 0xFFFF),
        status=st.sampled_from(list(ResultStatus)),
        detail=st.text(max_size=40),
    ),
)


@given(message_st)
def test_every_message_round_trips(message: Message) -> None:
    msg_type, payload = encode_message(message)
    assert decode_message(msg_type, payload) == message


@settings(max_examples=400)
@given(st.integers(0, 255), st.binary(max_size=200))
def test_random_payloads_raise_only_payload_error(msg_type: int, payload: bytes) -> None:
    error: PayloadError | None = None
    try:
        decode_message(msg_type, payload)
    except PayloadError as exc:
        error = exc
    assert error is None or error.msg_type == msg_type


@settings(max_examples=300)
@given(message_st, st.data())
def test_mutated_payloads_raise_only_payload_error(message: Message, data: st.DataObject) -> None:
    msg_type, payload = encode_message(message)
    mutated = bytearray(payload)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(0, len(mutated)))
        if op == "flip" and pos < len(mutated):
            mutated[pos] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del mutated[pos:]
        else:
            mutated[pos:pos] = data.draw(st.binary(min_size=1, max_size=4))
    try:
        decoded = decode_message(msg_type, bytes(mutated))
    except PayloadError:
        return
    if isinstance(decoded, Readings):
        assert all(not isinstance(v, float) or math.isfinite(v) for _, _, v in decoded.values)


def test_trailing_bytes_are_an_error() -> None:
    msg_type, payload = encode_message(Ack(ref_seq=5))
    with pytest.raises(PayloadError, match="trailing"):
        decode_message(msg_type, payload + b"\x00")


def test_documented_readings_payload() -> None:
    """The READINGS example of docs/firmware-protocol.md."""
    message = Readings(
        ts_ms=1_732_780_800_000,
        values=((0, ValueType.F32, 540.0), (2, ValueType.U32, 9), (4, ValueType.BOOL, True)),
    )
    msg_type, payload = encode_message(message)
    assert msg_type is MessageType.READINGS
    assert payload.hex(" ") == (
        "00 00 01 93 71 c8 b8 00 03 00 01 44 07 00 00 02 04 00 00 00 09 04 05 01"
    )


HELLO = Hello(
    firmware_version=(1, 0, 0),
    has_clock=True,
    sample_interval_ms=1000,
    channels=(
        Channel(
            index=0,
            value_type=ValueType.F32,
            measurement="TrafficFlowObserved",
            field="intensity",
            tags={"lane": "1"},
        ),
        Channel(
            index=1,
            value_type=ValueType.I32,
            measurement="TrafficFlowObserved",
            field="averageVehicleSpeed",
            tags={"lane": "1"},
        ),
        Channel(index=2, value_type=ValueType.F32, measurement="NoiseLevelObserved", field="LAeq"),
        Channel(index=3, value_type=ValueType.F32, measurement="bad name", field="x"),
        Channel(index=4, value_type=ValueType.F32, measurement="Noise", field="time"),
    ),
)


def frame(message: Message, *, device_id: int = 0x0A01, seq: int = 1) -> Frame:
    msg_type, payload = encode_message(message)
    return Frame(msg_type, device_id, seq, payload)


def session() -> FirmwareSession:
    return FirmwareSession(device_names={0x0A01: "loop-3"}, clock_ns=lambda: GATEWAY_NOW)


def test_readings_grouped_per_measurement_with_device_time() -> None:
    s = session()
    assert s.handle(frame(HELLO)) == ([], HELLO)
    assert s.counters["bad_channel"] == 2
    values = (
        (0, ValueType.F32, 0.21),
        (1, ValueType.I32, 43),
        (2, ValueType.F32, 61.5),
        (9, ValueType.F32, 1.0),
    )
    readings, _ = s.handle(frame(Readings(ts_ms=1_732_780_800_123, values=values), seq=2))
    by_m = {r.measurement: r for r in readings}
    traffic = by_m["TrafficFlowObserved"]
    assert traffic.device == "loop-3"
    assert traffic.ts == 1_732_780_800_123_000_000
    assert traffic.clock == "device"
    assert traffic.tags == {"lane": "1"}
    # float32 noise trimmed; an integer channel of a float field is written as a float
    assert traffic.fields == {"intensity": 0.21, "averageVehicleSpeed": 43.0}
    assert isinstance(traffic.fields["averageVehicleSpeed"], float)
    assert by_m["NoiseLevelObserved"].fields == {"LAeq": 61.5}
    assert s.counters["unknown_channel"] == 1


def test_device_without_clock_gets_gateway_time() -> None:
    s = session()
    s.handle(
        frame(
            Hello(
                firmware_version=(1, 0, 0),
                has_clock=False,
                sample_interval_ms=1,
                channels=HELLO.channels[:1],
            )
        )
    )
    (reading,), _ = s.handle(frame(Readings(ts_ms=0, values=((0, ValueType.F32, 1.0),))))
    assert (reading.ts, reading.clock) == (GATEWAY_NOW, "gateway")


def test_unset_device_clock_is_counted_and_replaced() -> None:
    s = session()
    s.handle(frame(HELLO))
    (reading,), _ = s.handle(frame(Readings(ts_ms=5_000, values=((0, ValueType.F32, 1.0),))))
    assert (reading.ts, reading.clock) == (GATEWAY_NOW, "gateway")
    assert s.counters["device_clock_invalid"] == 1


def test_readings_before_hello_are_counted_not_guessed() -> None:
    s = session()
    readings, message = s.handle(frame(Readings(ts_ms=0, values=((0, ValueType.F32, 1.0),))))
    assert readings == []
    assert isinstance(message, Readings)
    assert s.counters["readings_before_hello"] == 1


def test_default_device_name_and_bad_payload_counter() -> None:
    s = FirmwareSession()
    assert s.device(0xBEEF).name == "fw-0000beef"
    assert s.handle(Frame(MessageType.READINGS, 1, 1, b"\x01")) == ([], None)
    assert s.handle(Frame(0x7F, 1, 1, b"")) == ([], None)
    assert (s.counters["bad_payload"], s.counters["unknown_type"]) == (1, 1)
