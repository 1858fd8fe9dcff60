"""NMEA fields that ``float()`` accepts but no receiver sends (inf, nan) are bad fields."""

from __future__ import annotations

import math

import pytest

from firmware_bridge import NmeaDecoder, NmeaSession
from simulators.devices import format_sentence

GOOD_RMC = "GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230324,003.1,W"


def _feed(session: NmeaSession, *bodies: str) -> list[float]:
    out = []
    for sentence in NmeaDecoder().feed(b"".join(format_sentence(b) for b in bodies)):
        out += session.handle(sentence)
    out += session.flush()
    return [v for r in out for v in r.fields.values() if isinstance(v, float)]


@pytest.mark.parametrize(
    "body",
    [
        "GPRMC,123519,A,4807.038,N,01131.000,E,inf,084.4,230324,003.1,W",
        "GPRMC,123519,A,4807.038,N,01131.000,E,022.4,nan,230324,003.1,W",
        "GPRMC,123519,A,4807.038,N,01131.000,E,1e999,084.4,230324,003.1,W",
        "GPRMC,1235nan,A,4807.038,N,01131.000,E,022.4,084.4,230324,003.1,W",
        "GPRMC,123519,A,48nan,N,01131.000,E,022.4,084.4,230324,003.1,W",
        "GPRMC,123519,A,4807.038,N,011-inf,E,022.4,084.4,230324,003.1,W",
    ],
)
def test_non_finite_rmc_fields_are_counted_bad_and_emit_nothing(body: str) -> None:
    s = NmeaSession(device="bus-1", clock_ns=lambda: 0)
    assert _feed(s, body) == []
    assert s.counters["bad_field"] == 1
    assert s.counters["fixes"] == 0


@pytest.mark.parametrize(
    "gga",
    [
        "GPGGA,123519,4807.038,N,01131.000,E,1,08,NaN,545.4,M,46.9,M,,",
        "GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,-Infinity,M,46.9,M,,",
    ],
)
def test_non_finite_gga_is_refused_and_the_fix_has_only_finite_values(gga: str) -> None:
    s = NmeaSession(device="bus-1", clock_ns=lambda: 0)
    values = _feed(s, gga, GOOD_RMC)
    assert s.counters["bad_field"] == 1
    assert s.counters["fixes"] == 1
    assert values
    assert all(math.isfinite(v) for v in values)


def test_non_finite_vtg_speed_is_refused() -> None:
    s = NmeaSession(device="bus-1", clock_ns=lambda: 0)
    rmc = "GPRMC,123519,A,4807.038,N,01131.000,E,,,230324,003.1,W"
    # a GGA of the previous second first: the RMC then waits for its epoch's VTG/GGA
    gga = "GPGGA,123518,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"
    values = _feed(s, gga, rmc, "GPVTG,inf,T,034.4,M,005.5,N,nan,K")
    assert s.counters["bad_field"] == 1
    assert s.counters["fixes"] == 1
    assert all(math.isfinite(v) for v in values)
