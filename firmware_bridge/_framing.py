"""The firmware frame: COBS-delimited, CRC-16 protected. Pure functions, no I/O.

On the wire (``docs/firmware-protocol.md`` is normative)::

    0x00 | COBS( body ) | 0x00          each frame is delimited on both sides

    body (before COBS), big-endian:
    +---------+---------+-----------+-------+-----------------+----------+
    | version | type    | device_id | seq   | payload         | crc16    |
    | u8 = 1  | u8      | u32       | u16   | 0..MAX_PAYLOAD  | u16      |
    +---------+---------+-----------+-------+-----------------+----------+
      0         1         2..5        6..7    8..n-3            n-2..n-1

    crc16 = CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, xorout 0)
            over version..payload; binascii.crc_hqx(body_without_crc, 0xFFFF).

The leading delimiter costs one byte per frame and buys resynchronisation: a frame that
lost its tail (or its closing 0x00) cannot swallow the next frame, because that frame
starts with its own 0x00. Runs of 0x00 are idle and ignored.

Two decoders share these rules:

- :func:`decode` is the reference ``decode(buffer) -> (consumed, item)`` step function;
- :class:`FrameDecoder` is the stateful bulk decoder for streams (``bytes.split`` on the
  delimiter, the C COBS codec and the C CRC), counting every discarded segment by reason.
"""

from __future__ import annotations

import struct
from binascii import crc_hqx
from collections.abc import Callable
from typing import Final, NamedTuple

from cobs import cobs

__all__ = [
    "DISCARD_REASONS",
    "HEADER_SIZE",
    "MAX_ENCODED_SIZE",
    "MAX_FRAME_SIZE",
    "MAX_PAYLOAD_SIZE",
    "MIN_FRAME_SIZE",
    "PROTOCOL_VERSION",
    "Discarded",
    "Frame",
    "FrameDecoder",
    "decode",
    "encode_frame",
]

PROTOCOL_VERSION: Final = 1
_HEADER: Final = struct.Struct(">BBIH")
HEADER_SIZE: Final = _HEADER.size  # 8
CRC_SIZE: Final = 2
MIN_FRAME_SIZE: Final = HEADER_SIZE + CRC_SIZE  # 10
#: Room for a HELLO listing ~15 channels with names and units (multi-lane detectors), and
#: still one small buffer on a microcontroller.
MAX_FRAME_SIZE: Final = 1024
MAX_PAYLOAD_SIZE: Final = MAX_FRAME_SIZE - MIN_FRAME_SIZE
#: COBS adds one byte per started 254-byte block.
MAX_ENCODED_SIZE: Final = MAX_FRAME_SIZE + (MAX_FRAME_SIZE + 253) // 254
_CRC_INIT: Final = 0xFFFF
_DELIM: Final = b"\x00"
_cobs_encode: Final[Callable[[bytes], bytes]] = cobs.encode
_cobs_decode: Final[Callable[[bytes], bytes]] = cobs.decode
_CobsError: Final[type[Exception]] = cobs.DecodeError

#: Counter names under which discarded segments are counted.
DISCARD_REASONS: Final = ("cobs_error", "runt", "crc_error", "oversize", "bad_version")


class Frame(NamedTuple):
    """A frame that passed COBS, length, CRC and version checks."""

    msg_type: int
    device_id: int
    seq: int
    payload: bytes


class Discarded(NamedTuple):
    """Bytes the decoder skipped: ``reason`` is one of :data:`DISCARD_REASONS`."""

    reason: str
    size: int


def encode_frame(msg_type: int, device_id: int, seq: int, payload: bytes = b"") -> bytes:
    """Encode one frame, delimiters included, ready to write to the link."""
    if len(payload) > MAX_PAYLOAD_SIZE:
        raise ValueError(f"payload is {len(payload)} bytes, the limit is {MAX_PAYLOAD_SIZE}")
    body = _HEADER.pack(PROTOCOL_VERSION, msg_type, device_id, seq & 0xFFFF) + payload
    body += crc_hqx(body, _CRC_INIT).to_bytes(2, "big")
    return _DELIM + _cobs_encode(body) + _DELIM


def _decode_segment(segment: bytes) -> Frame | Discarded:
    size = len(segment)
    if size > MAX_ENCODED_SIZE:
        return Discarded("oversize", size)
    try:
        body = _cobs_decode(segment)
    except _CobsError:
        return Discarded("cobs_error", size)
    if len(body) < MIN_FRAME_SIZE:
        return Discarded("runt", size)
    if crc_hqx(body, _CRC_INIT):
        return Discarded("crc_error", size)
    version, msg_type, device_id, seq = _HEADER.unpack_from(body)
    if version != PROTOCOL_VERSION:
        return Discarded("bad_version", size)
    return Frame(msg_type, device_id, seq, body[HEADER_SIZE:-CRC_SIZE])


def decode(buffer: bytes | bytearray) -> tuple[int, Frame | Discarded | None]:
    """Decode the first frame in ``buffer``.

    Returns ``(consumed, item)``: drop ``consumed`` bytes from the front of the buffer, then

    - ``item`` is a :class:`Frame`: a good frame;
    - ``item`` is a :class:`Discarded`: bad bytes were skipped (count them by reason);
    - ``item`` is ``None``: no complete segment yet, wait for more bytes.

    A partial segment longer than :data:`MAX_ENCODED_SIZE` is consumed and reported as
    ``oversize`` straight away, so a stream without delimiters cannot grow the buffer
    without bound (its remainder then fails as a separate segment).
    """
    n = len(buffer)
    start = 0
    while start < n and buffer[start] == 0:
        start += 1
    end = buffer.find(_DELIM, start)
    if end < 0:
        if n - start > MAX_ENCODED_SIZE:
            return n, Discarded("oversize", n - start)
        return start, None
    return end + 1, _decode_segment(bytes(buffer[start:end]))


class FrameDecoder:
    """Stateful bulk decoder: feed it chunks as they arrive, get the good frames back.

    Every discarded segment is counted in :attr:`counters` under its reason; ``frames``
    counts good frames and ``bytes`` every byte fed. A segment that grows past
    :data:`MAX_ENCODED_SIZE` is dropped as soon as it does, and the rest of it up to the
    next delimiter is skipped without being counted twice.
    """

    __slots__ = ("_skipping", "_tail", "counters")

    def __init__(self) -> None:
        self._tail = b""
        self._skipping = False
        self.counters: dict[str, int] = dict.fromkeys(("frames", "bytes", *DISCARD_REASONS), 0)

    def reset(self) -> None:
        """Forget a partial segment (after a reconnect: its rest will never arrive)."""
        self._tail = b""
        self._skipping = False

    def feed(self, data: bytes) -> list[Frame]:
        """Decode every complete frame in the stream so far."""
        counters = self.counters
        counters["bytes"] += len(data)
        if self._tail:
            data = self._tail + data
        parts = data.split(_DELIM)
        tail = parts.pop()
        if self._skipping:
            if parts:
                # The rest of an oversize segment already counted: drop it silently.
                parts[0] = b""
                self._skipping = False
            else:
                tail = b""
        if len(tail) > MAX_ENCODED_SIZE:
            counters["oversize"] += 1
            self._skipping = True
            tail = b""
        self._tail = tail
        out: list[Frame] = []
        append = out.append
        decode_cobs = _cobs_decode
        cobs_error = _CobsError
        unpack = _HEADER.unpack_from
        for seg in parts:
            if not seg:
                continue
            if len(seg) > MAX_ENCODED_SIZE:
                counters["oversize"] += 1
                continue
            try:
                body = decode_cobs(seg)
            except cobs_error:
                counters["cobs_error"] += 1
                continue
            if len(body) < MIN_FRAME_SIZE:
                counters["runt"] += 1
                continue
            if crc_hqx(body, _CRC_INIT):
                counters["crc_error"] += 1
                continue
            version, msg_type, device_id, seq = unpack(body)
            if version != PROTOCOL_VERSION:
                counters["bad_version"] += 1
                continue
            append(Frame(msg_type, device_id, seq, body[HEADER_SIZE:-CRC_SIZE]))
        counters["frames"] += len(out)
        return out
