"""The firmware frame codec: golden vectors, resynchronisation, counters, fuzzing."""

from __future__ import annotations

import random
from binascii import crc_hqx

import pytest
from cobs import cobs
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge import (
    DISCARD_REASONS,
    MAX_ENCODED_SIZE,
    MAX_PAYLOAD_SIZE,
    Discarded,
    Frame,
    FrameDecoder,
    decode,
    encode_frame,
)

# The example of docs/firmware-protocol.md: an ACK (type 3) from device 0x00000A01, seq 7,
# acknowledging seq 0x0102.
DOC_ACK_FRAME = bytes.fromhex("00 03 01 03 01 03 0A 01 06 07 01 02 19 88 00".replace(" ", ""))


def decode_all(data: bytes) -> tuple[list[Frame], dict[str, int]]:
    """Drive the pure step decoder the way a caller is meant to."""
    frames: list[Frame] = []
    counts = dict.fromkeys(DISCARD_REASONS, 0)
    buf = bytearray(data)
    while True:
        consumed, item = decode(buf)
        del buf[:consumed]
        if isinstance(item, Frame):
            frames.append(item)
        elif isinstance(item, Discarded):
            counts[item.reason] += 1
        elif consumed == 0:
            break
    return frames, counts


frames_st = st.builds(
    Frame,
    msg_type=st.integers(0, 255),
    device_id=st.integers(0, 0xFFFFFFFF),
    seq=st.integers(0, 0xFFFF),
    payload=st.binary(max_size=MAX_PAYLOAD_SIZE),
)


def wire(frame: Frame) -> bytes:
    return encode_frame(frame.msg_type, frame.device_id, frame.seq, frame.payload)


def test_crc_is_ccitt_false() -> None:
    assert crc_hqx(b"123456789", 0xFFFF) == 0x29B1


def test_documented_example_bytes() -> None:
    assert encode_frame(0x03, 0x00000A01, 7, bytes.fromhex("0102")) == DOC_ACK_FRAME
    assert decode(DOC_ACK_FRAME) == (len(DOC_ACK_FRAME), Frame(3, 0x0A01, 7, b"\x01\x02"))


def test_frame_is_delimited_on_both_sides_and_has_no_inner_zero() -> None:
    data = encode_frame(2, 0, 0, bytes(40))
    assert data[0] == 0
    assert data[-1] == 0
    assert 0 not in data[1:-1]


def test_oversize_payload_is_refused_when_encoding() -> None:
    with pytest.raises(ValueError, match="limit"):
        encode_frame(2, 1, 1, bytes(MAX_PAYLOAD_SIZE + 1))


@given(st.lists(frames_st, max_size=8))
def test_round_trip_through_both_decoders(frames: list[Frame]) -> None:
    data = b"".join(wire(f) for f in frames)
    assert decode_all(data)[0] == frames
    dec = FrameDecoder()
    assert dec.feed(data) == frames
    assert dec.counters["frames"] == len(frames)
    assert all(dec.counters[r] == 0 for r in DISCARD_REASONS)


@given(st.lists(frames_st, min_size=1, max_size=6), st.data())
def test_arbitrary_chunking_gives_the_same_frames(frames: list[Frame], data: st.DataObject) -> None:
    stream = b"".join(wire(f) for f in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    dec = FrameDecoder()
    out: list[Frame] = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        out += dec.feed(stream[prev:cut])
        prev = cut
    assert out == frames


@settings(max_examples=300)
@given(st.binary(max_size=3000))
def test_random_bytes_never_raise(data: bytes) -> None:
    frames, _ = decode_all(data)
    dec = FrameDecoder()
    assert len(dec.feed(data)) == len(frames)


@settings(max_examples=300)
@given(
    st.lists(frames_st, min_size=1, max_size=5),
    st.lists(st.tuples(st.integers(0, 10_000), st.binary(min_size=1, max_size=40)), max_size=4),
    st.integers(0, 2**32),
)
def test_noise_only_costs_the_frames_it_touches(
    frames: list[Frame], noise: list[tuple[int, bytes]], seed: int
) -> None:
    """Noise inserted inside a frame kills at most that frame; all untouched ones survive."""
    pieces = [wire(f) for f in frames]
    touched: set[int] = set()
    rng = random.Random(seed)
    for position, junk in noise:
        i = position % len(pieces)
        at = rng.randrange(len(pieces[i]) + 1)
        pieces[i] = pieces[i][:at] + junk + pieces[i][at:]
        touched.add(i)
    stream = b"".join(pieces)
    got = FrameDecoder().feed(stream)
    for i, frame in enumerate(frames):
        if i not in touched:
            assert frame in got
    assert decode_all(stream)[0] == got


@settings(max_examples=200)
@given(st.lists(frames_st, min_size=2, max_size=5), st.data())
def test_truncated_frame_does_not_swallow_the_next(
    frames: list[Frame], data: st.DataObject
) -> None:
    frames = [f._replace(seq=n) for n, f in enumerate(frames)]
    pieces = [wire(f) for f in frames]
    i = data.draw(st.integers(0, len(pieces) - 2))
    cut = data.draw(st.integers(1, len(pieces[i]) - 1))
    pieces[i] = pieces[i][:cut]
    got = FrameDecoder().feed(b"".join(pieces))
    # Cutting only the closing delimiter leaves a decodable frame: it may or may not appear.
    assert [f for j, f in enumerate(frames) if j != i] == [f for f in got if f != frames[i]]


@settings(max_examples=200)
@given(st.lists(frames_st, min_size=1, max_size=4), st.data())
def test_bit_flips_are_detected_and_counted(frames: list[Frame], data: st.DataObject) -> None:
    pieces = [wire(f) for f in frames]
    i = data.draw(st.integers(0, len(pieces) - 1))
    body = bytearray(pieces[i])
    pos = data.draw(st.integers(1, len(body) - 2))
    body[pos] ^= 1 << data.draw(st.integers(0, 7))
    pieces[i] = bytes(body)
    dec = FrameDecoder()
    got = dec.feed(b"".join(pieces))
    assert got == [f for j, f in enumerate(frames) if j != i]
    assert sum(dec.counters[r] for r in DISCARD_REASONS) >= 1


def test_each_reason_is_counted() -> None:
    good = encode_frame(2, 1, 1, b"abc")
    header = bytes([1, 2, 0, 0, 0, 1, 0, 1]) + b"abc"
    crc = crc_hqx(header, 0xFFFF)
    version2 = bytes([2]) + header[1:]
    cases = {
        "cobs_error": b"\x00\x05ab\x00",
        "runt": b"\x00\x02\x01\x00",
        "crc_error": b"\x00" + cobs.encode(header + (crc ^ 1).to_bytes(2, "big")) + b"\x00",
        "oversize": b"\x00" + b"\x01" * (MAX_ENCODED_SIZE + 1) + b"\x00",
        "bad_version": b"\x00"
        + cobs.encode(version2 + crc_hqx(version2, 0xFFFF).to_bytes(2, "big"))
        + b"\x00",
    }
    for reason, junk in cases.items():
        dec = FrameDecoder()
        assert dec.feed(junk + good) == [Frame(2, 1, 1, b"abc")], reason
        assert dec.counters[reason] == 1, (reason, dec.counters)
        expected_counts = {**dict.fromkeys(DISCARD_REASONS, 0), reason: 1}
        assert decode_all(junk + good) == ([Frame(2, 1, 1, b"abc")], expected_counts)


def test_endless_stream_without_delimiter_is_bounded_and_counted_once() -> None:
    dec = FrameDecoder()
    for _ in range(10):
        assert dec.feed(b"\x01" * 400) == []
    assert dec.counters["oversize"] == 1
    good = encode_frame(1, 2, 3, b"")
    assert dec.feed(b"\x01\x01" + good) == [Frame(1, 2, 3, b"")]
    assert dec.counters["oversize"] == 1
    assert sum(dec.counters[r] for r in DISCARD_REASONS) == 1


def test_reset_drops_a_partial_frame() -> None:
    dec = FrameDecoder()
    good = encode_frame(1, 2, 3, b"xyz")
    assert dec.feed(good[:6]) == []
    dec.reset()
    assert dec.feed(good) == [Frame(1, 2, 3, b"xyz")]
    assert sum(dec.counters[r] for r in DISCARD_REASONS) == 0


def test_a_multi_lane_detector_hello_fits_one_frame() -> None:
    from firmware_bridge import Channel, Hello, ValueType, encode_message

    fields = ("intensity", "averageVehicleSpeed", "occupancy", "averageHeadwayTime", "vehicleCount")
    channels = tuple(
        Channel(
            index=lane * 5 + i,
            value_type=ValueType.F32,
            measurement="TrafficFlowObserved",
            field=name,
            unit="km/h",
            tags={"lane": str(lane)},
        )
        for lane in range(3)
        for i, name in enumerate(fields)
    )
    hello = Hello(firmware_version=(1, 0, 0), has_clock=True, sample_interval_ms=1000,
                  channels=channels)  # fmt: skip
    msg_type, payload = encode_message(hello)
    frame = encode_frame(msg_type, 0x0A00, 1, payload)
    consumed, decoded = decode(frame)
    assert consumed == len(frame)
    assert isinstance(decoded, Frame)
    assert decoded.payload == payload
