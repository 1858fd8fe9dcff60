"""Input plugins: where readings come from.

An input is built from its typed config (:data:`INPUTS` maps config ``type`` to the class)
and runs as one task in the agent's input task group until cancelled::

    class Input:
        name: str
        state: str                      # "starting" | "up" | "down" | "retrying"
        async def run(self, sink: Sink) -> None

It hands readings to ``sink.submit(readings, ack)``; ``ack`` (if given) is called once those
readings are safely in the spool, which lets an input with acknowledgements (local MQTT
QoS 1, manual ack) keep the guarantee end to end across a crash of the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import re
import ssl
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Final, Protocol

import msgspec
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent._config import MqttInputConfig, MqttSubscription, SimulatedInputConfig
from edge_agent._errors import InputError
from foundation import BrokerSetupError, configure_client
from telemetry import TS_MAX_NS, TS_MIN_NS, Reading

__all__ = ["INPUTS", "Input", "MqttInput", "SimulatedInput", "Sink", "build_input"]

log: Final = logging.getLogger("edge_agent.inputs")


class Sink(Protocol):
    def submit(self, readings: list[Reading], ack: Callable[[], None] | None) -> None: ...

    def count_drop(self, stage: str, channel: str, n: int = 1) -> None: ...


class Input(ABC):
    """Base of input plugins."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.state = "starting"

    @abstractmethod
    async def run(self, sink: Sink) -> None:
        """Produce readings into ``sink`` until cancelled."""


# -- local MQTT ------------------------------------------------------------------------------

_PATH_RE: Final = re.compile(r"\.?([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+)\]")
_TS_SCALE: Final = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}


def compile_path(path: str) -> list[str | int]:
    """``$.a.b[0]`` / ``a.b[0]`` → ``["a", "b", 0]``."""
    rest = path.removeprefix("$")
    parts: list[str | int] = []
    pos = 0
    while pos < len(rest):
        m = _PATH_RE.match(rest, pos)
        if m is None:
            raise InputError(f"JSON path {path!r} is not supported at {rest[pos:]!r}")
        parts.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        pos = m.end()
    return parts


def _lookup(doc: Any, path: list[str | int]) -> Any:
    for key in path:
        if isinstance(key, int):
            if not isinstance(doc, list) or key >= len(doc):
                return None
        elif not isinstance(doc, dict):
            return None
        doc = doc[key] if isinstance(key, int) else doc.get(key)
    return doc


def _template(text: str, levels: list[str]) -> str:
    def sub(m: re.Match[str]) -> str:
        i = int(m.group(1))
        return levels[i] if i < len(levels) else ""

    return re.sub(r"\{(\d+)\}", sub, text)


def _filter_matches(flt: str, topic: str) -> bool:
    f, t = flt.split("/"), topic.split("/")
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(f) == len(t)


class _Parser:
    """Turns one message of a subscription into a reading (or a reason why not)."""

    def __init__(self, sub: MqttSubscription) -> None:
        self.sub = sub
        self.fields = {name: compile_path(p) for name, p in sub.fields.items()}
        self.ts_path = None if sub.timestamp is None else compile_path(sub.timestamp)
        self.ts_scale = _TS_SCALE[sub.timestamp_unit]

    def parse(self, topic: str, payload: bytes) -> Reading:
        sub = self.sub
        levels = topic.split("/")
        now = time.time_ns()
        ts, clock = now, "gateway"
        fields: dict[str, float | int | bool | str] = {}
        if sub.format == "number":
            try:
                value = float(payload.decode("ascii").strip())
            except (UnicodeDecodeError, ValueError) as exc:
                raise InputError(f"payload is not a number: {payload[:40]!r}") from exc
            fields[sub.field or "value"] = value
        else:
            try:
                doc = msgspec.json.decode(payload)
            except msgspec.DecodeError as exc:
                raise InputError(f"payload is not JSON: {exc}") from exc
            for name, path in self.fields.items():
                v = _lookup(doc, path)
                if isinstance(v, bool | int | float | str) and not (
                    isinstance(v, float) and not math.isfinite(v)
                ):
                    fields[name] = v
            if not fields:
                raise InputError("no configured field found in the payload")
            if self.ts_path is not None:
                raw = _lookup(doc, self.ts_path)
                if isinstance(raw, int | float) and not isinstance(raw, bool):
                    cand = int(raw * self.ts_scale)
                    if TS_MIN_NS <= cand < TS_MAX_NS:
                        ts, clock = cand, "device"
        tags = {k: _template(v, levels) for k, v in sub.tags.items()}
        try:
            return msgspec.convert(
                {
                    "d": _template(sub.device, levels),
                    "m": sub.measurement,
                    "t": ts,
                    "f": fields,
                    "g": {k: v for k, v in tags.items() if v},
                    "c": clock,
                },
                Reading,
            )
        except msgspec.ValidationError as exc:
            raise InputError(f"reading does not fit the contract: {exc}") from exc


class MqttInput(Input):
    """Subscriptions on the gateway's local broker.

    QoS 1, persistent session (clean start off, session expiry one week) and *manual*
    acknowledgement: a message is acked only once its readings are in the spool, so a crash
    of the agent makes the local broker deliver it again.
    """

    SESSION_EXPIRY_S: Final = 7 * 24 * 3600
    RECEIVE_MAXIMUM: Final = 10_000

    def __init__(self, cfg: MqttInputConfig, *, gateway: str) -> None:
        super().__init__(cfg.name)
        self.cfg = cfg
        self.client_id = cfg.client_id or f"edge-{gateway}-{cfg.name}"
        # Certificates and the password file are read once, when the input is built.
        self._tls_context: ssl.SSLContext | None = None
        try:
            if cfg.tls is not None:
                self._tls_context = cfg.tls.ssl_context()
            self._password = cfg.read_password()
        except BrokerSetupError as exc:
            raise InputError(f"input {cfg.name!r}: {exc}") from exc
        self.parsers = [(s.topic, _Parser(s)) for s in cfg.subscriptions]
        self.received = 0
        self.rejected = 0

    async def run(self, sink: Sink) -> None:
        loop = asyncio.get_running_loop()
        delay = 0.5
        while True:
            closed = asyncio.Event()
            client = self._client(loop, sink, closed)
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = self.SESSION_EXPIRY_S
            props.ReceiveMaximum = self.RECEIVE_MAXIMUM
            client.connect_async(
                self.cfg.host, self.cfg.port, keepalive=30, clean_start=False, properties=props
            )
            client.loop_start()
            try:
                await closed.wait()
            finally:
                if self.state == "up":
                    await self._acks_processed(client)
                    client.disconnect()
                await asyncio.to_thread(client.loop_stop)
                self.state = "retrying"
            delay = min(delay * 2, 30.0)
            await asyncio.sleep(random.uniform(0, delay))

    async def _acks_processed(self, client: mqtt.Client) -> None:
        """Wait (briefly) until the broker has read the PUBACKs sent so far.

        The broker keeps pushing messages, so the socket usually has unread data when it is
        closed: the kernel then sends RST, and PUBACKs the broker had not read yet are lost,
        making it redeliver (and the processors count twice) messages that were committed.
        The broker handles a client's packets in order, so the PUBACK of a QoS 1 publish
        (an empty message on a topic of our own, or a refusal) proves the earlier ones were read.
        """
        info = client.publish(f"{self.client_id}/closing", b"", qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return
        with contextlib.suppress(TimeoutError, RuntimeError, ValueError):
            await asyncio.wait_for(asyncio.to_thread(info.wait_for_publish, 2.0), 2.5)

    def _client(
        self, loop: asyncio.AbstractEventLoop, sink: Sink, closed: asyncio.Event
    ) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            manual_ack=True,
        )
        client.reconnect_delay_set(3600, 3600)
        configure_client(client, self.cfg, context=self._tls_context, password=self._password)

        def post(fn: Callable[..., None], *args: Any) -> None:
            if not loop.is_closed():
                loop.call_soon_threadsafe(fn, *args)

        def up() -> None:
            self.state = "up"
            log.info("input connected", extra={"input": self.name})

        def down(reason: str) -> None:
            if self.state == "up":
                log.warning("input lost", extra={"input": self.name, "reason": reason})
            self.state = "down"
            closed.set()

        def on_connect(c: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
            if rc.is_failure:
                post(down, str(rc))
                return
            c.subscribe([(topic, 1) for topic, _ in self.parsers])
            post(up)

        def on_disconnect(
            _c: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: object
        ) -> None:
            post(down, str(rc))

        def on_connect_fail(_c: mqtt.Client, _u: object) -> None:
            post(down, "connection failed")

        def on_message(c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
            post(self._deliver, sink, c, msg.topic, bytes(msg.payload), msg.mid, msg.qos)

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_connect_fail = on_connect_fail
        client.on_message = on_message
        return client

    def _deliver(
        self, sink: Sink, client: mqtt.Client, topic: str, payload: bytes, mid: int, qos: int
    ) -> None:
        self.received += 1

        def ack() -> None:
            if qos > 0:
                client.ack(mid, qos)

        for flt, parser in self.parsers:
            if _filter_matches(flt, topic):
                try:
                    reading = parser.parse(topic, payload)
                except InputError as exc:
                    self.rejected += 1
                    sink.count_drop("input_parse", f"{self.name}:{topic}")
                    log.debug("payload refused", extra={"topic": topic, "reason": str(exc)})
                    ack()  # a bad payload does not become good by redelivery
                    return
                sink.submit([reading], ack)
                return
        ack()


# -- simulated -------------------------------------------------------------------------------


class SimulatedInput(Input):
    """Sine waves with noise for ``devices`` devices at ``rate_hz`` each (bench and demo)."""

    def __init__(self, cfg: SimulatedInputConfig, *, gateway: str) -> None:
        super().__init__(cfg.name)
        self.cfg = cfg
        self.devices = [f"{cfg.device_prefix}-{i}" for i in range(cfg.devices)]

    async def run(self, sink: Sink) -> None:
        self.state = "up"
        period = 1.0 / self.cfg.rate_hz
        rng = random.Random(self.name)
        next_t = time.monotonic()
        while True:
            ts = time.time_ns()
            phase = ts / 1e9 / 60.0
            readings = [
                Reading(
                    device=d,
                    measurement=self.cfg.measurement,
                    ts=ts,
                    fields={
                        f: 10.0 * math.sin(phase + i + j) + rng.gauss(0.0, 0.1)
                        for j, f in enumerate(self.cfg.fields)
                    },
                    clock="gateway",
                )
                for i, d in enumerate(self.devices)
            ]
            sink.submit(readings, None)
            next_t += period
            await asyncio.sleep(max(0.0, next_t - time.monotonic()))


def _bridge(kind: str) -> Callable[..., Input]:
    """Factory that imports the firmware bridge plugins only when a config uses them."""

    def make(cfg: Any, *, gateway: str) -> Input:
        from edge_agent import _bridge_inputs

        cls: Callable[..., Input] = getattr(_bridge_inputs, kind)
        return cls(cfg, gateway=gateway)

    return make


#: Input registry: config ``type`` -> factory(config, gateway=...).
INPUTS: Final[dict[str, Callable[..., Input]]] = {
    "mqtt": MqttInput,
    "simulated": SimulatedInput,
    "firmware": _bridge("FirmwareInput"),
    "nmea": _bridge("NmeaInput"),
    "modbus": _bridge("ModbusInput"),
}


def build_input(cfg: Any, *, gateway: str) -> Input:
    factory = INPUTS.get(cfg.type)
    if factory is None:
        raise InputError(f"no input plugin of type {cfg.type!r}")
    return factory(cfg, gateway=gateway)
