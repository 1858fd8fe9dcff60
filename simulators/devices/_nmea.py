"""A simulated GPS receiver: RMC, VTG and GGA once per epoch on a :class:`PtyPort`.

The vehicle drives a straight line at constant speed and heading from a start point
(enough to check position, speed and course end to end). Every emitted fix is kept in
:attr:`NmeaDevice.sent` as (unix time, lat, lon, speed km/h, heading).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from firmware_bridge import nmea_checksum
from foundation import StartableThread
from simulators.devices._pty import PtyPort

__all__ = ["NmeaDevice", "NmeaDeviceConfig", "SentFix", "format_sentence"]

_EARTH_M = 6_371_000.0


def format_sentence(body: str) -> bytes:
    """``$<body>*<checksum>\\r\\n`` for a body like ``GPRMC,...``."""
    raw = body.encode("ascii")
    return b"$" + raw + f"*{nmea_checksum(raw):02X}\r\n".encode("ascii")


def _lat(value: float) -> tuple[str, str]:
    a = abs(value)
    d = int(a)
    return f"{d:02d}{(a - d) * 60:08.5f}", "N" if value >= 0 else "S"


def _lon(value: float) -> tuple[str, str]:
    a = abs(value)
    d = int(a)
    return f"{d:03d}{(a - d) * 60:08.5f}", "E" if value >= 0 else "W"


@dataclass(frozen=True, kw_only=True, slots=True)
class NmeaDeviceConfig:
    start_lat: float = 52.520008
    start_lon: float = 13.404954
    speed_kmh: float = 36.0
    heading: float = 45.0
    rate_hz: float = 10.0
    talker: str = "GN"
    satellites: int = 9
    hdop: float = 0.9
    altitude_m: float = 34.5


@dataclass(frozen=True, slots=True)
class SentFix:
    unix_s: float
    lat: float
    lon: float
    speed_kmh: float
    heading: float


class NmeaDevice(StartableThread):
    """A GPS receiver writing NMEA at ``rate_hz`` fixes per second (9600-baud pacing)."""

    def __init__(self, port: PtyPort, config: NmeaDeviceConfig | None = None) -> None:
        self.port = port
        self.config = config or NmeaDeviceConfig()
        self.sent: list[SentFix] = []
        super().__init__()
        self._t0: float | None = None

    def start(self) -> None:
        if not self.port.plugged:
            self.port.plug()
        self._start_thread("sim-nmea")

    def position(self, unix_s: float) -> tuple[float, float]:
        cfg = self.config
        if self._t0 is None:
            self._t0 = unix_s
        dist = cfg.speed_kmh / 3.6 * (unix_s - self._t0)
        h = math.radians(cfg.heading)
        lat = cfg.start_lat + math.degrees(dist * math.cos(h) / _EARTH_M)
        lon = cfg.start_lon + math.degrees(
            dist * math.sin(h) / (_EARTH_M * math.cos(math.radians(cfg.start_lat)))
        )
        return lat, lon

    def epoch(self, unix_s: float) -> bytes:
        """The sentences of one epoch (RMC, VTG, GGA) at ``unix_s`` (whole centiseconds).

        A subclass returns ``b""`` for an epoch the receiver skips (nothing is written).
        """
        cfg = self.config
        when = datetime.fromtimestamp(unix_s, UTC)
        hhmmss = when.strftime("%H%M%S") + f".{when.microsecond // 10_000:02d}"
        ddmmyy = when.strftime("%d%m%y")
        lat, lon = self.position(unix_s)
        (la, ns), (lo, ew) = _lat(lat), _lon(lon)
        knots = cfg.speed_kmh / 1.852
        t = cfg.talker
        rmc = f"{t}RMC,{hhmmss},A,{la},{ns},{lo},{ew},{knots:.3f},{cfg.heading:.2f},{ddmmyy},,,A"
        vtg = f"{t}VTG,{cfg.heading:.2f},T,,M,{knots:.3f},N,{cfg.speed_kmh:.3f},K,A"
        gga = (
            f"{t}GGA,{hhmmss},{la},{ns},{lo},{ew},1,{cfg.satellites:02d},{cfg.hdop:.1f},"
            f"{cfg.altitude_m:.1f},M,44.0,M,,"
        )
        self.sent.append(SentFix(unix_s, lat, lon, cfg.speed_kmh, cfg.heading))
        return format_sentence(rmc) + format_sentence(vtg) + format_sentence(gga)

    def _run(self) -> None:
        period = 1.0 / self.config.rate_hz
        while not self._stop.is_set():
            now = round(time.time(), 2)
            if self.port.plugged and (sentences := self.epoch(now)):
                self.port.write(sentences, paced=False)
            self._stop.wait(period)
