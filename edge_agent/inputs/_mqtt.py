"""``mqtt``: subscriptions on the gateway's local broker, acknowledged once spooled.

QoS 1, persistent session (clean start off, session expiry one week) and *manual*
acknowledgement: a message is acked only once its readings are in the spool, so a crash
of the agent makes the local broker deliver it again. A payload that does not parse is
counted (stage ``input_parse``, channel ``<input>:<topic>``, and per reason) and acked: it
does not become good by redelivery. Any payload: the parser raises only
:class:`~edge_agent.PayloadRejected` (a hypothesis property feeds it arbitrary bytes), and
:meth:`MqttInput._deliver` acks and counts even what a parser bug would raise, so one
message can never hold back the acknowledgements (and stall the input once the local
broker's in-flight window is full).

The paho client lifecycle here is the input's own until the shared session layer
(``foundation.mqtt``) takes it over.
"""

# ruff: noqa: RUF012 - pydantic copies mutable defaults per instance; ruff cannot see that
# FrozenModel (edge_agent._model) is a pydantic BaseModel.
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import re
import ssl
import time
from collections.abc import Callable
from typing import Annotated, Any, Final, Literal, Self

import msgspec
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import Field, model_validator

from edge_agent._errors import InputError, PayloadRejected
from edge_agent._model import FrozenModel, Id, Name
from edge_agent.inputs._base import Input, Sink
from foundation import BrokerAccess, BrokerSetupError, check_broker_security, configure_client
from telemetry import TS_MAX_NS, TS_MIN_NS, Reading

__all__ = ["MqttInput", "MqttInputConfig", "MqttSubscription", "compile_path"]

log: Final = logging.getLogger("edge_agent.inputs")


class MqttSubscription(FrozenModel):
    """One topic filter on the local broker and how its messages become readings.

    ``device`` and tag values may hold ``{N}``: the N-th level (0-based) of the topic.
    ``format: json`` takes each field from a JSON path (``$.a.b[0]``); ``format: number``
    reads the whole payload as one number into ``field``.
    """

    topic: Annotated[str, Field(min_length=1)]
    device: Annotated[str, Field(min_length=1)]
    measurement: Name
    format: Literal["json", "number"] = "json"
    fields: dict[Name, str] = {}
    field: Name | None = None
    timestamp: str | None = None
    timestamp_unit: Literal["s", "ms", "us", "ns"] = "ns"
    tags: dict[Name, str] = {}

    @model_validator(mode="after")
    def _shape(self) -> Self:
        if self.format == "json" and not self.fields:
            raise ValueError("format json needs fields (name: JSON path)")
        if self.format == "number" and self.field is None:
            raise ValueError("format number needs field")
        if self.format == "number" and self.timestamp is not None:
            raise ValueError("format number has no timestamp path")
        if "#" in self.topic[:-1] or any(
            ("+" in lvl or "#" in lvl) and len(lvl) > 1 for lvl in self.topic.split("/")
        ):
            raise ValueError(f"topic filter {self.topic!r} is not valid")
        return self


class MqttInputConfig(BrokerAccess):
    """Subscriptions on the gateway's local broker (QoS 1, persistent session, acked only
    once the readings are in the spool). Credentials and ``tls`` as for the uplink
    (:class:`foundation._broker.BrokerAccess`), with the same rules."""

    type: Literal["mqtt"]
    name: Id
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    client_id: Id | None = None
    #: Development only: permits ``tls.insecure`` and passwords over plain TCP to non-local hosts.
    allow_insecure: bool = False
    subscriptions: Annotated[list[MqttSubscription], Field(min_length=1)]

    @model_validator(mode="after")
    def _secure(self) -> Self:
        check_broker_security(
            host=self.host,
            tls=self.tls,
            has_password=self.has_password,
            allow_insecure=self.allow_insecure,
        )
        return self


# -- payload → reading -----------------------------------------------------------------------

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
                raise PayloadRejected(
                    "not_number", f"payload is not a number: {payload[:40]!r}"
                ) from exc
            fields[sub.field or "value"] = value
        else:
            try:
                doc = msgspec.json.decode(payload)
            except msgspec.DecodeError as exc:
                raise PayloadRejected("not_json", f"payload is not JSON: {exc}") from exc
            except RecursionError as exc:  # msgspec's guard against deep nesting
                raise PayloadRejected("too_deep", "payload is nested too deeply") from exc
            for name, path in self.fields.items():
                v = _lookup(doc, path)
                if isinstance(v, bool | int | float | str) and not (
                    isinstance(v, float) and not math.isfinite(v)
                ):
                    fields[name] = v
            if not fields:
                raise PayloadRejected("no_field", "no configured field found in the payload")
            if self.ts_path is not None:
                cand = _timestamp_ns(_lookup(doc, self.ts_path), self.ts_scale)
                if cand is not None:
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
            raise PayloadRejected(
                "contract", f"reading does not fit the contract: {exc}"
            ) from exc


def _timestamp_ns(raw: object, scale: int) -> int | None:
    """A device timestamp in ns, or ``None`` (use the gateway clock) when it is not a number
    or outside the contract's range. Checked before converting: ``1e300`` seconds is
    a float that ``int()`` cannot take once scaled to infinity (``OverflowError``)."""
    if not isinstance(raw, int | float) or isinstance(raw, bool):
        return None
    if isinstance(raw, float):
        scaled = raw * scale
        if not (TS_MIN_NS <= scaled < TS_MAX_NS):  # also false for nan and inf
            return None
        cand = int(scaled)
    else:
        cand = raw * scale
    return cand if TS_MIN_NS <= cand < TS_MAX_NS else None


# -- the input -------------------------------------------------------------------------------


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
                    sink.submit([reading], ack)
                except PayloadRejected as exc:
                    self._refused(sink, topic, exc.reason, exc.detail)
                    ack()  # a bad payload does not become good by redelivery
                # Not "log and carry on": a bug met by one payload is counted (reason
                # ``internal``) and logged with its traceback; leaving the message unacked
                # instead would stall the input once the broker's in-flight window is full.
                except Exception as exc:  # noqa: BLE001
                    self._refused(sink, topic, "internal", repr(exc), exc)
                    ack()
                return
        ack()

    def _refused(
        self, sink: Sink, topic: str, reason: str, detail: str, exc: Exception | None = None
    ) -> None:
        self.rejected += 1
        sink.count_reject(self.name, reason, topic)
        extra = {"input": self.name, "topic": topic[:200], "reason": reason, "detail": detail}
        if exc is not None:
            log.error("payload broke the parser", extra=extra, exc_info=exc)
        else:
            log.debug("payload refused", extra=extra)
