"""A reference device speaking the firmware protocol (``docs/firmware-protocol.md``).

It runs in its own thread against a :class:`PtyPort`: HELLO at start-up (and after a
replug or reboot), READINGS every ``sample_interval_ms``, and it answers COMMANDs with
an ACK followed by a COMMAND_RESULT. A repeated command (same seq as the last one) is
answered again from the cache without being executed twice. It keeps a ledger of every
READINGS it sent so tests can compare what arrived with what left.
"""

from __future__ import annotations

import math
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from firmware_bridge import (
    MAX_PAYLOAD_SIZE,
    Ack,
    Channel,
    CommandResult,
    FrameDecoder,
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
    encode_frame,
    encode_message,
)
from foundation import StartableThread
from simulators.devices._pty import PtyPort

__all__ = ["DEFAULT_CHANNELS", "FirmwareDevice", "FirmwareDeviceConfig", "SentReadings"]

DEFAULT_CHANNELS: tuple[Channel, ...] = (
    Channel(
        index=0,
        value_type=ValueType.F32,
        measurement="TrafficFlowObserved",
        field="intensity",
        unit="veh/h",
        tags={"lane": "1"},
    ),
    Channel(
        index=1,
        value_type=ValueType.F32,
        measurement="TrafficFlowObserved",
        field="averageVehicleSpeed",
        unit="km/h",
        tags={"lane": "1"},
    ),
    Channel(
        index=2,
        value_type=ValueType.U32,
        measurement="TrafficFlowObserved",
        field="vehicleCount",
        unit="1",
        tags={"lane": "1"},
    ),
    Channel(
        index=3,
        value_type=ValueType.F32,
        measurement="AirQualityObserved",
        field="temperature",
        unit="Cel",
    ),
)

#: A channel's value at monotonic time ``t``; ``None``: no sample this time (a dropout), the
#: channel is left out of the READINGS frame (and no frame is sent when every one is).
ValueFn = Callable[[Channel, float], float | int | bool | None]


def default_values(channel: Channel, t: float) -> float | int | bool:
    """Smooth, deterministic values per channel: a sine around a channel-specific base."""
    base = 10.0 * (channel.index + 1)
    wave = base + 0.5 * base * math.sin(t / 7.0 + channel.index)
    if channel.value_type is ValueType.BOOL:
        return wave > base
    if channel.value_type in (ValueType.I32, ValueType.U32):
        return round(wave)
    return wave


@dataclass(frozen=True, kw_only=True, slots=True)
class FirmwareDeviceConfig:
    device_id: int = 0x0000_0A01
    firmware_version: tuple[int, int, int] = (1, 4, 2)
    has_clock: bool = True
    sample_interval_ms: int = 100
    channels: tuple[Channel, ...] = DEFAULT_CHANNELS
    #: Send HELLO again when plugged back in (the device lost power with the adapter).
    hello_on_plug: bool = True
    #: Simulated reboot time.
    reboot_s: float = 0.2


@dataclass(frozen=True, slots=True)
class SentReadings:
    seq: int
    ts_ms: int
    values: tuple[tuple[int, ValueType, float | int | bool], ...]


@dataclass(slots=True)
class _Cached:
    seq: int
    frames: list[bytes] = field(default_factory=list)


class FirmwareDevice(StartableThread):
    """A simulated sensor board. Use as a context manager or call start()/stop()."""

    def __init__(
        self,
        port: PtyPort,
        config: FirmwareDeviceConfig | None = None,
        *,
        values: ValueFn = default_values,
    ) -> None:
        self.port = port
        self.config = config or FirmwareDeviceConfig()
        self.values = values
        self.sample_interval_ms = self.config.sample_interval_ms
        self.clock_offset_ms = 0
        self.sent: list[SentReadings] = []
        self.commands: list[tuple[int, Message]] = []
        self.executed: list[Message] = []
        self.counters: dict[str, int] = dict.fromkeys(
            ("frames_sent", "hello_sent", "commands", "duplicates", "reboots", "lost_writes",
             "samples_dropped"),
            0,
        )
        #: Set by a test to make the device stop answering (ack loss simulation).
        self.mute_acks = 0
        self._seq = 0
        super().__init__()
        self._hello_due = True
        self._last_command: _Cached | None = None
        self._lock = threading.Lock()
        self._was_plugged = False

    def start(self) -> None:
        # A HELLO that cannot be framed is a configuration error: say so here, not as a
        # crash of the device thread later.
        _, payload = encode_message(self.hello())
        if len(payload) > MAX_PAYLOAD_SIZE:
            raise ValueError(
                f"device {self.config.device_id:#x}: HELLO for {len(self.config.channels)} "
                f"channels is {len(payload)} bytes, the frame payload limit is "
                f"{MAX_PAYLOAD_SIZE}: expose fewer channels"
            )
        if not self.port.plugged:
            self.port.plug()
        self._start_thread(f"sim-firmware[{self.config.device_id:08x}]")

    # -- wire ---------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFF
        return self._seq

    def _frame(self, message: Message, *, seq: int | None = None) -> bytes:
        msg_type, payload = encode_message(message)
        return encode_frame(
            msg_type, self.config.device_id, self._next_seq() if seq is None else seq, payload
        )

    def send_raw(self, data: bytes) -> None:
        """Write bytes as they are (fault injection: noise, truncated frames)."""
        with self._lock:
            if not self.port.write(data):
                self.counters["lost_writes"] += 1

    def _send(self, frame: bytes) -> None:
        with self._lock:
            if self.port.write(frame):
                self.counters["frames_sent"] += 1
            else:
                self.counters["lost_writes"] += 1

    def hello(self) -> Hello:
        cfg = self.config
        return Hello(
            firmware_version=cfg.firmware_version,
            has_clock=cfg.has_clock,
            sample_interval_ms=self.sample_interval_ms,
            channels=cfg.channels,
        )

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000 + self.clock_offset_ms

    def sample(self) -> Readings:
        """The channels' values now; channels whose value function gives ``None`` are out."""
        t = time.monotonic()
        values = tuple(
            (ch.index, ch.value_type, self._typed(ch, value))
            for ch in self.config.channels
            if (value := self.values(ch, t)) is not None
        )
        return Readings(ts_ms=self.now_ms() if self.config.has_clock else 0, values=values)

    @staticmethod
    def _typed(ch: Channel, value: float | int | bool) -> float | int | bool:
        if ch.value_type is ValueType.F32:
            # What a float32 can carry, so the ledger equals what the gateway decodes.
            return float(struct.unpack(">f", struct.pack(">f", float(value)))[0])
        return value

    # -- main loop ----------------------------------------------------------------------

    def _run(self) -> None:
        decoder = FrameDecoder()
        next_sample = time.monotonic()
        while not self._stop.is_set():
            plugged = self.port.plugged
            if plugged and not self._was_plugged:
                decoder.reset()
                if self.config.hello_on_plug or self._seq == 0:
                    self._hello_due = True
            self._was_plugged = plugged
            if not plugged:
                time.sleep(0.01)
                continue
            if self._hello_due:
                self._hello_due = False
                self._send(self._frame(self.hello()))
                self.counters["hello_sent"] += 1
            now = time.monotonic()
            if now >= next_sample:
                readings = self.sample()
                if readings.values:
                    seq = self._next_seq()
                    self._send(self._frame(readings, seq=seq))
                    self.sent.append(SentReadings(seq, readings.ts_ms, readings.values))
                else:  # every channel dropped out: the board sends nothing this period
                    self.counters["samples_dropped"] += 1
                next_sample = max(next_sample + self.sample_interval_ms / 1000.0, now)
                continue
            data = self.port.read(min(0.02, next_sample - now))
            if data:
                for frame in decoder.feed(data):
                    self._on_frame(frame.msg_type, frame.device_id, frame.seq, frame.payload)

    def _on_frame(self, msg_type: int, device_id: int, seq: int, payload: bytes) -> None:
        if device_id not in (self.config.device_id, 0xFFFFFFFF):
            return
        if msg_type != MessageType.COMMAND:
            return
        try:
            command = decode_message(msg_type, payload)
        except PayloadError:
            return
        self.counters["commands"] += 1
        self.commands.append((seq, command))
        if self.mute_acks > 0:
            self.mute_acks -= 1
            return
        cached = self._last_command
        if cached is not None and cached.seq == seq:
            self.counters["duplicates"] += 1
            for frame in cached.frames:
                self._send(frame)
            return
        ack = self._frame(Ack(ref_seq=seq))
        self._send(ack)
        status, detail = self._execute(command)
        result = self._frame(CommandResult(ref_seq=seq, status=status, detail=detail))
        self._send(result)
        self._last_command = _Cached(seq, [ack, result])
        if isinstance(command, Reboot):
            self._reboot()
        elif isinstance(command, Identify):
            self._hello_due = True

    def _execute(self, command: Message) -> tuple[ResultStatus, str]:
        if isinstance(command, SetSampleInterval):
            if not 10 <= command.interval_ms <= 3_600_000:
                return ResultStatus.INVALID_ARGUMENT, "interval must be 10 ms .. 1 h"
            self.sample_interval_ms = command.interval_ms
        elif isinstance(command, TimeSync):
            self.clock_offset_ms = command.unix_ms - time.time_ns() // 1_000_000
        elif not isinstance(command, Reboot | Identify):
            return ResultStatus.UNSUPPORTED, "not a command"
        self.executed.append(command)
        return ResultStatus.OK, ""

    def _reboot(self) -> None:
        self.counters["reboots"] += 1
        self._stop.wait(self.config.reboot_s)
        self._seq = 0
        self._last_command = None
        self.sample_interval_ms = self.config.sample_interval_ms
        self._hello_due = True
