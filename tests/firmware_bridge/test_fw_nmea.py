"""NMEA 0183: sentence framing, checksum, fix assembly; pynmeagps as an independent oracle."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pynmeagps import NMEAReader

from firmware_bridge import (
    NMEA_DISCARD_REASONS,
    Discarded,
    NmeaDecoder,
    NmeaSession,
    Sentence,
    decode_nmea,
)
from simulators.devices import NmeaDevice, NmeaDeviceConfig, PtyPort, format_sentence

RMC = b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230324,003.1,W*61\r\n"
GGA = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\r\n"
VTG = b"$GPVTG,054.7,T,034.4,M,005.5,N,010.2,K*48\r\n"


def test_known_sentences_verify() -> None:
    dec = NmeaDecoder()
    got = dec.feed(GGA + VTG + RMC)
    assert [s.kind for s in got] == ["GGA", "VTG", "RMC"]
    gga = ("123519", "4807.038", "N", "01131.000", "E", "1", "08", "0.9", "545.4", "M", "46.9")
    assert got[0] == Sentence("GP", "GGA", (*gga, "M", "", ""))
    assert sum(dec.counters[r] for r in NMEA_DISCARD_REASONS) == 0


def test_fix_from_rmc_with_gga_of_the_same_second() -> None:
    s = NmeaSession(device="bus-0417", clock_ns=lambda: 0)
    out = []
    for sentence in NmeaDecoder().feed(GGA + RMC):
        out += s.handle(sentence)
    (reading,) = out
    assert reading.measurement == "Vehicle"
    assert reading.clock == "device"
    assert reading.ts == int(datetime(2024, 3, 23, 12, 35, 19, tzinfo=UTC).timestamp()) * 10**9
    assert reading.fields["latitude"] == pytest.approx(48 + 7.038 / 60)
    assert reading.fields["longitude"] == pytest.approx(11 + 31.0 / 60)
    assert reading.fields["speed"] == pytest.approx(22.4 * 1.852, abs=1e-3)
    assert reading.fields["heading"] == 84.4
    assert (reading.fields["satellites"], reading.fields["altitude"]) == (8, 545.4)


def test_void_fix_and_bad_fields_are_counted() -> None:
    s = NmeaSession(device="bus-1")
    void = format_sentence("GPRMC,123519,V,,,,,,,230324,,,N")
    bad = format_sentence("GPRMC,123519,A,48x7.038,N,01131.000,E,022.4,084.4,230324,,")
    for sentence in NmeaDecoder().feed(void + bad + format_sentence("GPGSV,1,1,00")):
        assert s.handle(sentence) == []
    assert (s.counters["no_fix"], s.counters["bad_field"], s.counters["unsupported"]) == (1, 1, 1)


@pytest.mark.parametrize(
    ("junk", "reason"),
    [
        (RMC.replace(b"*61", b"*62"), "checksum_error"),
        (RMC.replace(b"*61", b""), "missing_checksum"),
        (RMC[:30], "truncated"),
        (b"\x01\x02garbage", "garbage"),
        (b"$GP" + b"A" * 200 + b"\r\n", "oversize"),
    ],
)
def test_bad_input_is_counted_and_the_next_sentence_survives(junk: bytes, reason: str) -> None:
    dec = NmeaDecoder()
    assert [s.kind for s in dec.feed(junk + GGA)] == ["GGA"]
    assert dec.counters[reason] == 1
    assert sum(dec.counters[r] for r in NMEA_DISCARD_REASONS) == 1


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_random_bytes_never_raise(data: bytes) -> None:
    NmeaDecoder().feed(data)
    buf = bytearray(data)
    while True:
        consumed, item = decode_nmea(buf)
        del buf[:consumed]
        assert item is None or isinstance(item, Sentence | Discarded)
        if consumed == 0 and item is None:
            break


@settings(max_examples=300)
@given(st.lists(st.sampled_from([RMC, GGA, VTG]), min_size=1, max_size=8), st.data())
def test_mutations_never_raise_and_untouched_sentences_survive(
    lines: list[bytes], data: st.DataObject
) -> None:
    touched = data.draw(st.integers(0, len(lines) - 1))
    line = bytearray(lines[touched])
    pos = data.draw(st.integers(0, len(line) - 1))
    line[pos] = data.draw(st.integers(0, 255).filter(lambda b: b != line[pos]))
    stream = b"".join(bytes(line) if i == touched else x for i, x in enumerate(lines))
    dec = NmeaDecoder()
    got = dec.feed(stream)
    session = NmeaSession(device="bus-1")
    for sentence in got:
        session.handle(sentence)
    assert len(got) >= len(lines) - 2  # the touched line, and the next if '\n' was hit


def test_simulated_receiver_agrees_with_pynmeagps() -> None:
    """Our parser and pynmeagps read the simulator's sentences to the same numbers."""
    dev = NmeaDevice(PtyPort("/nonexistent"), NmeaDeviceConfig(start_lat=-33.86, start_lon=-70.65))
    rng = random.Random(7)
    session = NmeaSession(device="bus-1")
    # Until it has seen a GGA the session cannot know one will follow the RMC: warm up.
    for sentence in NmeaDecoder().feed(dev.epoch(1_749_999_999.0)):
        session.handle(sentence)
    for _ in range(20):
        t = 1_750_000_000 + rng.randrange(10**6) + rng.randrange(100) / 100
        raw = dev.epoch(t)
        readings = [r for s in NmeaDecoder().feed(raw) for r in session.handle(s)]
        (reading,) = readings
        for line in raw.splitlines(keepends=True):
            msg = NMEAReader.parse(line, validate=1)
            if msg.msgID == "RMC":
                assert reading.fields["latitude"] == pytest.approx(msg.lat, abs=1e-7)
                assert reading.fields["longitude"] == pytest.approx(msg.lon, abs=1e-7)
                assert reading.fields["speed"] == pytest.approx(msg.spd * 1.852, abs=1e-3)
                assert reading.fields["heading"] == pytest.approx(msg.cog)
            if msg.msgID == "GGA":
                assert reading.fields["altitude"] == pytest.approx(msg.alt)
                assert reading.fields["satellites"] == msg.numSV
        assert reading.ts == round(t * 100) * 10**7
