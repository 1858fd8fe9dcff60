"""Firmware protocol: frames to :class:`telemetry.Reading`, commands to frames.

:class:`FirmwareSession` is the sans-I/O half (device table, channel maps from HELLO,
timestamps, counters); :class:`FirmwareLink` binds it to a :class:`SerialTransport`, runs
the receive loop and matches ACK / COMMAND_RESULT to commands by sequence number::

    transport.read() ─▶ FrameDecoder.feed() ─▶ decode_message() ─┬─ READINGS ─▶ readings queue
                                                                 ├─ HELLO ────▶ channel map
                                                                 └─ ACK/RESULT ▶ pending[seq]
"""

from __future__ import annotations

import asyncio
import logging
import time
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

from firmware_bridge._config import FirmwareLinkConfig
from firmware_bridge._errors import (
    CommandRejected,
    CommandTimeout,
    LinkError,
    PayloadError,
)
from firmware_bridge._framing import Frame, FrameDecoder, encode_frame
from firmware_bridge._link import SerialReadingLink
from firmware_bridge._messages import (
    Ack,
    Channel,
    Command,
    CommandResult,
    Hello,
    Identify,
    Message,
    Readings,
    ResultStatus,
    ValueType,
    decode_message,
    encode_message,
)
from firmware_bridge._transport import LinkState
from telemetry import (
    MAX_TAGS,
    NAME_RE,
    RESERVED_FIELD_NAMES,
    RESERVED_TAG_KEYS,
    TS_MAX_NS,
    TS_MIN_NS,
    FieldValue,
    Reading,
    float_fields,
)

__all__ = ["DeviceState", "FirmwareLink", "FirmwareSession"]

log = logging.getLogger("firmware_bridge.firmware")

BROADCAST_ID: Final = 0xFFFFFFFF
_SESSION_COUNTERS: Final = (
    "readings",
    "hello",
    "bad_payload",
    "unknown_type",
    "unknown_channel",
    "bad_channel",
    "readings_before_hello",
    "device_clock_invalid",
    "unexpected_ack",
)


@dataclass(slots=True)
class DeviceState:
    """What the gateway knows about one device on the link."""

    device_id: int
    name: str
    hello: Hello | None = None
    channels: Mapping[int, Channel] = field(default_factory=dict)
    last_seq: int | None = None
    identify_sent_at: float = -1e9


def _valid_channel(ch: Channel) -> bool:
    if not NAME_RE.fullmatch(ch.measurement) or not NAME_RE.fullmatch(ch.field):
        return False
    if ch.field in RESERVED_FIELD_NAMES or len(ch.tags) > MAX_TAGS:
        return False
    return all(
        NAME_RE.fullmatch(k) and k not in RESERVED_TAG_KEYS and 0 < len(v) <= 256
        for k, v in ch.tags.items()
    )


def _f32(value: float) -> float:
    # A float32 carries ~7 significant digits; 0.21 arrives as 0.20999999344348907.
    return float(f"{value:.7g}")


class FirmwareSession:
    """Sans-I/O state of a firmware link: frames in, readings and control messages out."""

    def __init__(
        self,
        *,
        device_names: Mapping[int, str] | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._names = dict(device_names or {})
        self._clock_ns = clock_ns
        self.devices: dict[int, DeviceState] = {}
        self.counters: dict[str, int] = dict.fromkeys(_SESSION_COUNTERS, 0)

    def device(self, device_id: int) -> DeviceState:
        state = self.devices.get(device_id)
        if state is None:
            name = self._names.get(device_id) or f"fw-{device_id:08x}"
            state = self.devices[device_id] = DeviceState(device_id=device_id, name=name)
        return state

    def handle(self, frame: Frame) -> tuple[list[Reading], Message | None]:
        """Digest one frame: the readings it carries and the decoded message (or None)."""
        try:
            message = decode_message(frame.msg_type, frame.payload)
        except PayloadError as exc:
            key = "unknown_type" if exc.reason == "unknown message type" else "bad_payload"
            self.counters[key] += 1
            log.debug("frame skipped: %s", exc, extra={"device_id": frame.device_id})
            return [], None
        state = self.device(frame.device_id)
        state.last_seq = frame.seq
        if isinstance(message, Readings):
            return self.to_readings(state, message), message
        if isinstance(message, Hello):
            self.counters["hello"] += 1
            channels: dict[int, Channel] = {}
            for ch in message.channels:
                if _valid_channel(ch):
                    channels[ch.index] = ch
                else:
                    self.counters["bad_channel"] += 1
            state.hello = message
            state.channels = types.MappingProxyType(channels)
        return [], message

    def to_readings(self, state: DeviceState, message: Readings) -> list[Reading]:
        """Group the values of one READINGS message into one Reading per measurement+tags."""
        if state.hello is None:
            self.counters["readings_before_hello"] += 1
            return []
        clock: str = "device"
        ts = message.ts_ms * 1_000_000
        if message.ts_ms == 0 or not state.hello.has_clock:
            ts, clock = self._clock_ns(), "gateway"
        elif not TS_MIN_NS <= ts < TS_MAX_NS:
            self.counters["device_clock_invalid"] += 1
            ts, clock = self._clock_ns(), "gateway"
        groups: dict[tuple[str, tuple[tuple[str, str], ...]], dict[str, FieldValue]] = {}
        channels = state.channels
        for index, value_type, value in message.values:
            ch = channels.get(index)
            if ch is None:
                self.counters["unknown_channel"] += 1
                continue
            key = (ch.measurement, tuple(sorted(ch.tags.items())))
            fields = groups.get(key)
            if fields is None:
                fields = groups[key] = {}
            out: FieldValue = value
            if value_type is ValueType.F32 and isinstance(value, float):
                out = _f32(value)
            elif value_type in (ValueType.I32, ValueType.U32) and ch.field in float_fields(
                ch.measurement
            ):
                out = float(value)
            fields[ch.field] = out
        readings = [
            Reading(
                device=state.name,
                measurement=measurement,
                ts=ts,
                fields=fields,
                tags=dict(tags),
                clock="device" if clock == "device" else "gateway",
            )
            for (measurement, tags), fields in groups.items()
        ]
        self.counters["readings"] += len(readings)
        return readings


class _Pending:
    __slots__ = ("ack", "result")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.ack: asyncio.Future[None] = loop.create_future()
        self.result: asyncio.Future[CommandResult] = loop.create_future()


class FirmwareLink(SerialReadingLink):
    """A serial link to devices running the project firmware.

    ::

        config = FirmwareLinkConfig(serial=SerialConfig(url="/dev/ttyUSB0"))
        async with FirmwareLink(config) as link:
            result = await link.send_command(SetSampleInterval(interval_ms=500))
            async for reading in link.readings():
                ...

    The link survives the device going away: the transport retries and the session keeps
    its channel maps (a device that rebooted sends HELLO again). :attr:`counters` merges
    transport, framing and session counters.
    """

    def __init__(
        self,
        config: FirmwareLinkConfig,
        *,
        clock_ns: Callable[[], int] = time.time_ns,
        on_state: Callable[[LinkState], None] | None = None,
    ) -> None:
        super().__init__(
            config.serial, max_pending_readings=config.max_pending_readings, on_state=on_state
        )
        self.config = config
        self.decoder = FrameDecoder()
        self.session = FirmwareSession(device_names=config.device_names, clock_ns=clock_ns)
        self._no_wait: set[int] = set()
        self._pending: dict[int, _Pending] = {}
        self._hello_seen = asyncio.Event()
        self._seq = 0

    def _on_close(self) -> None:
        for pending in self._pending.values():
            for fut in (pending.ack, pending.result):
                if not fut.done():
                    fut.cancel()

    # -- observation -------------------------------------------------------------------

    @property
    def counters(self) -> dict[str, int]:
        """Transport, framing and protocol counters of this link, merged by name."""
        merged = {**self.transport.counters, **self.decoder.counters, **self.session.counters}
        merged["readings_dropped"] = self._buffer.dropped
        return merged

    @property
    def devices(self) -> Mapping[int, DeviceState]:
        return types.MappingProxyType(self.session.devices)

    async def wait_hello(self) -> DeviceState:
        """Wait for the first HELLO; bound it with ``asyncio.timeout``."""
        await self._hello_seen.wait()
        return next(d for d in self.session.devices.values() if d.hello is not None)

    # -- commands ----------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFF
        while self._seq in self._pending:
            self._seq = (self._seq + 1) & 0xFFFF
        return self._seq

    async def send_command(
        self, command: Command, *, device_id: int | None = None
    ) -> CommandResult:
        """Send ``command`` and return the device's OK result.

        The frame is re-sent with the same sequence number (the device answers duplicates
        without executing them again) until ACKed, up to ``command_attempts`` times.
        Raises :class:`CommandTimeout`, :class:`CommandRejected` or :class:`LinkDown`.
        """
        if device_id is None:
            known = list(self.session.devices)
            device_id = known[0] if len(known) == 1 else BROADCAST_ID
        msg_type, payload = encode_message(command)
        seq = self._next_seq()
        frame = encode_frame(msg_type, device_id, seq, payload)
        pending = self._pending[seq] = _Pending(asyncio.get_running_loop())
        cfg = self.config
        try:
            for attempt in range(1, cfg.command_attempts + 1):
                await self.transport.write(frame)
                try:
                    async with asyncio.timeout(cfg.ack_timeout):
                        await asyncio.shield(pending.ack)
                    break
                except TimeoutError:
                    log.info(
                        "no ack, resending",
                        extra={"link": self.name, "seq": seq, "attempt": attempt},
                    )
            else:
                raise CommandTimeout(seq, "ack", cfg.ack_timeout * cfg.command_attempts)
            try:
                async with asyncio.timeout(cfg.result_timeout):
                    result = await pending.result
            except TimeoutError as exc:
                raise CommandTimeout(seq, "result", cfg.result_timeout) from exc
        finally:
            del self._pending[seq]
        if result.status is not ResultStatus.OK:
            raise CommandRejected(seq, result.status, result.detail)
        return result

    # -- receive loop ------------------------------------------------------------------

    def _reset(self) -> None:
        # Bytes of a frame cut by an unplug never complete: start clean.
        self.decoder.reset()

    async def _on_chunk(self, chunk: bytes) -> None:
        frames = self.decoder.feed(chunk)
        if frames:
            for device_id in self._dispatch(frames):
                await self._request_hello(device_id)

    def _dispatch(self, frames: list[Frame]) -> set[int]:
        session = self.session
        unidentified: set[int] = set()
        for frame in frames:
            readings, message = session.handle(frame)
            if readings:
                self._buffer.push(readings)
            elif isinstance(message, Ack | CommandResult):
                pending = self._pending.get(message.ref_seq)
                if pending is None:
                    if message.ref_seq not in self._no_wait:
                        session.counters["unexpected_ack"] += 1
                    continue
                if not pending.ack.done():
                    pending.ack.set_result(None)
                if isinstance(message, CommandResult) and not pending.result.done():
                    pending.result.set_result(message)
            elif isinstance(message, Hello):
                self._hello_seen.set()
            elif isinstance(message, Readings) and session.devices[frame.device_id].hello is None:
                unidentified.add(frame.device_id)
        return unidentified

    async def _request_hello(self, device_id: int) -> None:
        # An IDENTIFY without waiting for its result: the HELLO is the answer. At most one
        # per second per device, so a device that ignores it is not flooded.
        state = self.session.devices[device_id]
        now = time.monotonic()
        if now - state.identify_sent_at < 1.0:
            return
        state.identify_sent_at = now
        msg_type, payload = encode_message(Identify())
        seq = self._next_seq()
        # Its ACK and RESULT are expected; remember the last few so they are not counted.
        self._no_wait = {*list(self._no_wait)[-7:], seq}
        frame = encode_frame(msg_type, device_id, seq, payload)
        try:
            await self.transport.write(frame)
        except LinkError as exc:
            log.info("identify not sent: %s", exc, extra={"link": self.name})
