"""NMEA 0183 from GPS receivers: pure sentence framing and parsing, and the link.

A sentence on the wire::

    $GPRMC,123519.00,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W,A*6A\r\n
    │ │ │  └─ fields, comma separated ────────────────────────────────┘  │  └ CR LF
    │ │ └ sentence type                                         checksum ┘ (2 hex digits:
    │ └ talker (GP, GN, GL, GA, BD...)                         XOR of the bytes between
    └ start                                                    '$' and '*')

:func:`decode_nmea` is the ``decode(buffer) -> (consumed, item)`` step;
:class:`NmeaDecoder` the stateful stream decoder with per-reason counters;
:class:`NmeaSession` turns RMC (+ GGA, VTG of the same epoch) into ``Vehicle`` readings
with the receiver's UTC time (``clock="device"``).
"""

from __future__ import annotations

import calendar
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, NamedTuple

from firmware_bridge._config import NmeaLinkConfig
from firmware_bridge._framing import Discarded
from firmware_bridge._link import SerialReadingLink
from firmware_bridge._transport import LinkState
from telemetry import TS_MAX_NS, TS_MIN_NS, Clock, FieldValue, Reading

__all__ = [
    "NMEA_DISCARD_REASONS",
    "NmeaDecoder",
    "NmeaLink",
    "NmeaSession",
    "Sentence",
    "decode_nmea",
    "nmea_checksum",
]

log = logging.getLogger("firmware_bridge.nmea")

#: NMEA 0183 allows 82 characters; receivers' proprietary sentences run longer.
MAX_SENTENCE: Final = 128
KNOTS_TO_KMH: Final = 1.852
NMEA_DISCARD_REASONS: Final = (
    "garbage",
    "truncated",
    "oversize",
    "checksum_error",
    "missing_checksum",
)
_HEX: Final = frozenset(b"0123456789ABCDEFabcdef")


class Sentence(NamedTuple):
    """A checksum-verified sentence: ``talker`` (``GP``), ``kind`` (``RMC``), fields."""

    talker: str
    kind: str
    fields: tuple[str, ...]


def nmea_checksum(body: bytes) -> int:
    """XOR of ``body``: the bytes between ``$`` and ``*``."""
    acc = 0
    for b in body:
        acc ^= b
    return acc


def _parse_line(line: bytes) -> Sentence | Discarded:
    size = len(line) + 1
    star = line.rfind(b"*")
    if star < 0:
        return Discarded("missing_checksum", size)
    body, check = line[1:star], line[star + 1 :]
    if len(check) != 2 or not _HEX.issuperset(check):
        return Discarded("missing_checksum", size)
    if int(check, 16) != nmea_checksum(body):
        return Discarded("checksum_error", size)
    if not body.isascii() or any(b < 0x20 for b in body):
        return Discarded("garbage", size)
    parts = body.decode("ascii").split(",")
    address = parts[0]
    if len(address) < 3 or not address.isalnum():
        return Discarded("garbage", size)
    if address[0] == "P":  # proprietary: P + manufacturer + type
        return Sentence("P", address[1:], tuple(parts[1:]))
    return Sentence(address[:2], address[2:], tuple(parts[1:]))


def decode_nmea(buffer: bytes | bytearray) -> tuple[int, Sentence | Discarded | None]:
    """Decode the first sentence of ``buffer``: ``(consumed, Sentence | Discarded | None)``.

    Bytes before a ``$`` are discarded as ``garbage`` (CR/LF between sentences are not
    counted); a ``$`` before the line end means the previous sentence was cut
    (``truncated``); a line longer than :data:`MAX_SENTENCE` is ``oversize``.
    """
    n = len(buffer)
    start = buffer.find(b"$")
    if start < 0:
        junk = bytes(buffer).strip(b"\r\n")
        if not junk:
            return n, None
        # Keep nothing: without a '$' none of it can become a sentence.
        return n, Discarded("garbage", n)
    if start > 0:
        if bytes(buffer[:start]).strip(b"\r\n"):
            return start, Discarded("garbage", start)
        return start, None
    end = buffer.find(b"\n", 1)
    nxt = buffer.find(b"$", 1, end if end >= 0 else n)
    if nxt > 0:
        return nxt, Discarded("truncated", nxt)
    if end < 0:
        if n > MAX_SENTENCE:
            return n, Discarded("oversize", n)
        return 0, None
    if end > MAX_SENTENCE + 1:
        return end + 1, Discarded("oversize", end + 1)
    line = bytes(buffer[:end]).rstrip(b"\r")
    return end + 1, _parse_line(line)


class NmeaDecoder:
    """Stateful NMEA stream decoder: feed chunks, get checksum-verified sentences."""

    __slots__ = ("_buf", "counters")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.counters: dict[str, int] = dict.fromkeys(("sentences", *NMEA_DISCARD_REASONS), 0)

    def reset(self) -> None:
        self._buf.clear()

    def feed(self, data: bytes) -> list[Sentence]:
        buf = self._buf
        buf += data
        out: list[Sentence] = []
        counters = self.counters
        while buf:
            consumed, item = decode_nmea(buf)
            if consumed:
                del buf[:consumed]
            if isinstance(item, Sentence):
                out.append(item)
            elif isinstance(item, Discarded):
                counters[item.reason] += 1
            elif consumed == 0:
                break
        counters["sentences"] += len(out)
        return out


def _finite(value: str) -> float:
    """A decimal NMEA field; ``inf``/``nan`` (which ``float()`` accepts) are bad fields."""
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"not a finite number: {value!r}")
    return out


def _latlon(value: str, hemi: str, degree_digits: int) -> float:
    if not value or hemi not in ("N", "S", "E", "W"):
        raise ValueError("empty position")
    degrees = int(value[:degree_digits])
    minutes = _finite(value[degree_digits:])
    if not 0 <= minutes < 60:
        raise ValueError("minutes out of range")
    out = degrees + minutes / 60.0
    limit = 90.0 if degree_digits == 2 else 180.0
    if out > limit:
        raise ValueError("degrees out of range")
    return -out if hemi in ("S", "W") else out


def _time_of_day(value: str) -> float:
    if len(value) < 6:
        raise ValueError("bad time")
    h, m, sec = int(value[0:2]), int(value[2:4]), _finite(value[4:])
    if not (0 <= h < 24 and 0 <= m < 60 and 0 <= sec < 61):
        raise ValueError("bad time")
    return h * 3600 + m * 60 + sec


@dataclass(frozen=True, slots=True)
class _Gga:
    tod: float
    fields: dict[str, FieldValue]


class NmeaSession:
    """Sans-I/O: sentences in, ``Vehicle`` readings out (one per valid RMC fix).

    GGA of the same second adds ``altitude`` (m), ``satellites`` and ``hdop``; VTG fills
    speed and course when the RMC leaves them empty. Receivers order an epoch differently
    (u-blox: RMC, VTG, GGA; others GGA first), so a fix is emitted when the GGA of its
    second arrives, when the next RMC arrives, or at once if the receiver sends no GGA.
    Counters: ``fixes``, ``no_fix``, ``bad_field``, ``unsupported``, ``device_clock_invalid``.
    """

    def __init__(
        self,
        *,
        device: str,
        measurement: str = "Vehicle",
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.device = device
        self.measurement = measurement
        self._clock_ns = clock_ns
        self._gga: _Gga | None = None
        self._seen_gga = False
        self._pending: tuple[float, int, dict[str, FieldValue]] | None = None
        self.counters: dict[str, int] = dict.fromkeys(
            ("fixes", "no_fix", "bad_field", "unsupported", "device_clock_invalid"), 0
        )

    def handle(self, sentence: Sentence) -> list[Reading]:
        try:
            if sentence.kind == "RMC":
                return self._on_rmc(sentence.fields)
            if sentence.kind == "GGA":
                return self._on_gga(sentence.fields)
            if sentence.kind == "VTG":
                self._on_vtg(sentence.fields)
            else:
                self.counters["unsupported"] += 1
        except (ValueError, IndexError):
            self.counters["bad_field"] += 1
        return []

    def flush(self) -> list[Reading]:
        """Emit a fix still waiting for its GGA (end of stream, link going down)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return []
        _, ts, fields = pending
        self.counters["fixes"] += 1
        clock: Clock = "device"
        if not TS_MIN_NS <= ts < TS_MAX_NS:
            self.counters["device_clock_invalid"] += 1
            ts, clock = self._clock_ns(), "gateway"
        return [
            Reading(
                device=self.device, measurement=self.measurement, ts=ts, fields=fields, clock=clock
            )
        ]

    def _on_gga(self, f: tuple[str, ...]) -> list[Reading]:
        tod = _time_of_day(f[0])
        fields: dict[str, FieldValue] = {}
        if f[5] and int(f[5]) > 0:
            if f[6]:
                fields["satellites"] = int(f[6])
            if f[7]:
                fields["hdop"] = _finite(f[7])
            if f[8]:
                fields["altitude"] = _finite(f[8])
        self._gga = _Gga(tod, fields)
        self._seen_gga = True
        pending = self._pending
        if pending is not None and abs(pending[0] - tod) < 0.005:
            pending[2].update(fields)
            return self.flush()
        return []

    def _on_vtg(self, f: tuple[str, ...]) -> None:
        pending = self._pending
        if pending is None:
            return
        fields = pending[2]
        if "heading" not in fields and f[0]:
            fields["heading"] = _finite(f[0])
        if "speed" not in fields:
            if len(f) > 6 and f[6]:
                fields["speed"] = _finite(f[6])
            elif len(f) > 4 and f[4]:
                fields["speed"] = round(_finite(f[4]) * KNOTS_TO_KMH, 3)

    def _on_rmc(self, f: tuple[str, ...]) -> list[Reading]:
        out = self.flush()
        status = f[1]
        mode = f[11] if len(f) > 11 else ""
        if status != "A" or mode == "N":
            self.counters["no_fix"] += 1
            return out
        tod = _time_of_day(f[0])
        lat = _latlon(f[2], f[3], 2)
        lon = _latlon(f[4], f[5], 3)
        date = f[8]
        if len(date) != 6 or not date.isdigit():
            raise ValueError("bad date")
        day, month, yy = int(date[0:2]), int(date[2:4]), int(date[4:6])
        if not (1 <= month <= 12 and 1 <= day <= 31):
            raise ValueError("bad date")
        year = 1900 + yy if yy >= 80 else 2000 + yy  # GPS dates start in 1980
        midnight = calendar.timegm((year, month, day, 0, 0, 0, 0, 0, 0))
        ts = midnight * 1_000_000_000 + round(tod * 1e9)
        fields: dict[str, FieldValue] = {"latitude": lat, "longitude": lon}
        if f[6]:
            fields["speed"] = round(_finite(f[6]) * KNOTS_TO_KMH, 3)
        if f[7]:
            fields["heading"] = _finite(f[7])
        self._pending = (tod, ts, fields)
        gga = self._gga
        if gga is not None and abs(gga.tod - tod) < 0.005:
            fields.update(gga.fields)
            return out + self.flush()
        if not self._seen_gga:
            return out + self.flush()
        return out


class NmeaLink(SerialReadingLink):
    """A GPS receiver on a serial link, yielding one ``Vehicle`` reading per fix.

    ::

        config = NmeaLinkConfig(serial=SerialConfig(url="/dev/ttyACM0", baudrate=9600),
                                device="bus-0417")
        async with NmeaLink(config) as link:
            async for reading in link.readings():
                ...
    """

    rx_task_name = "nmea_rx"

    def __init__(
        self,
        config: NmeaLinkConfig,
        *,
        clock_ns: Callable[[], int] = time.time_ns,
        on_state: Callable[[LinkState], None] | None = None,
    ) -> None:
        super().__init__(
            config.serial, max_pending_readings=config.max_pending_readings, on_state=on_state
        )
        self.config = config
        self.decoder = NmeaDecoder()
        self.session = NmeaSession(
            device=config.device, measurement=config.measurement, clock_ns=clock_ns
        )

    @property
    def counters(self) -> dict[str, int]:
        merged = {**self.transport.counters, **self.decoder.counters, **self.session.counters}
        merged["readings_dropped"] = self._buffer.dropped
        return merged

    def _reset(self) -> None:
        self.decoder.reset()

    async def _on_chunk(self, chunk: bytes) -> None:
        for sentence in self.decoder.feed(chunk):
            readings = self.session.handle(sentence)
            if readings:
                self._buffer.push(readings)
