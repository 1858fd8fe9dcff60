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

The connection is a :class:`foundation.mqtt.MqttSession` (Receive Maximum 10,000, manual
acks released in receive order, reconnect with :class:`foundation.Backoff`); the agent's
synchronous ack after its spool commit is handed to the session through :class:`_Acks`.
"""

# ruff: noqa: RUF012 - pydantic copies mutable defaults per instance; ruff cannot see that
# FrozenModel (edge_agent._model) is a pydantic BaseModel.
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import re
import time
from collections import deque
from typing import Annotated, Any, Final, Literal, Self

import msgspec
from pydantic import Field, SecretStr, model_validator

from edge_agent._errors import InputError, PayloadRejected, errno_name
from edge_agent._model import FrozenModel, Id, Name
from edge_agent.inputs._base import Input, Sink
from foundation import Backoff, BrokerAccess, BrokerSetupError, check_broker_security
from foundation.mqtt import (
    Message,
    MqttConnectError,
    MqttDisconnected,
    MqttError,
    MqttSession,
    MqttSubscribeError,
    SessionConfig,
    SessionStatus,
)
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

    ::

        task input[<name>].run ── MqttSession input[<name>] (foundation.mqtt, in the loop)
          messages() ─▶ _deliver ─▶ sink.submit(readings, ack) ─▶ agent: spool commit
                                                                       │ ack() (sync)
          task input[<name>].acks ◀── _Acks: messages to ack ◀─────────┘
            └─ await msg.ack()  (the layer sends PUBACKs in receive order)
    """

    SESSION_EXPIRY_S: Final = 7 * 24 * 3600
    RECEIVE_MAXIMUM: Final = 10_000
    #: Reconnects: 0.5 s doubling to 30 s, full jitter (the first connect is retried here,
    #: later ones by the session with the same schedule).
    BACKOFF: Final = Backoff(initial=0.5, maximum=30.0, multiplier=2.0, jitter=1.0)
    CLOSING_TIMEOUT_S: Final = 2.0

    def __init__(self, cfg: MqttInputConfig, *, gateway: str) -> None:
        super().__init__(cfg.name)
        self.cfg = cfg
        self.client_id = cfg.client_id or f"edge-{gateway}-{cfg.name}"
        # Certificates and the password file are read once, when the input is built.
        try:
            tls_context = None if cfg.tls is None else cfg.tls.ssl_context()
            password = cfg.read_password()
        except BrokerSetupError as exc:
            raise InputError(f"input {cfg.name!r}: {exc}") from exc
        self._session_config = SessionConfig(
            host=cfg.host,
            port=cfg.port,
            client_id=self.client_id,
            access=BrokerAccess(
                username=cfg.username,
                password=None if password is None else SecretStr(password),
                tls=cfg.tls,
            ),
            ssl_context=tls_context,
            clean_start=False,
            session_expiry_s=self.SESSION_EXPIRY_S,
            manual_ack=True,
            receive_maximum=self.RECEIVE_MAXIMUM,
            # As before the session layer: every connect subscribes (retain handling 0).
            resubscribe="always",
            backoff=self.BACKOFF,
            name=f"input[{cfg.name}]",
        )
        self.parsers = [(s.topic, _Parser(s)) for s in cfg.subscriptions]
        #: The session has made its subscriptions once: only then is the input ``up``.
        self._subscribed = False
        self.received = 0
        self.rejected = 0
        self.reconnects = 0
        self.connect_failures = 0
        #: Set while the input is being stopped: the disconnect that follows is not a loss.
        self._closing = False

    def counters(self) -> dict[str, int]:
        return {
            "received": self.received,
            "rejected": self.rejected,
            "reconnects": self.reconnects,
            "connect_failures": self.connect_failures,
        }

    async def run(self, sink: Sink) -> None:
        attempt = 0
        self._closing = False
        while True:
            try:
                async with MqttSession(
                    self._session_config, on_connect=self._up, on_disconnect=self._down
                ) as session:
                    attempt = 0
                    try:
                        await self._serve(session, sink)
                    except asyncio.CancelledError:
                        self._closing = True  # a stop or a config swap, not a lost link
                        raise
                    finally:
                        self._subscribed = False
            except MqttConnectError as exc:
                self.state = "retrying"
                self.connect_failures += 1
                self.last_error = _describe(exc)
                delay = self.BACKOFF.delay(attempt)
                attempt += 1
                log.warning(
                    "input connect failed; retrying",
                    extra={
                        "input": self.name,
                        "errno": errno_name(exc),
                        "reason_code": exc.reason_code,
                        "reason": str(exc),
                        "retry_in_s": round(delay, 3),
                    },
                )
                await asyncio.sleep(delay)

    def _up(self, _status: SessionStatus) -> None:
        # The first connect reports before _serve subscribed; later ones once the session
        # restored the subscriptions.
        if self._subscribed:
            self.state = "up"
            log.info("input connected", extra={"input": self.name})

    def _down(self, status: SessionStatus) -> None:
        if self._closing:
            self.state = "closed"
            log.info("input disconnected (stopping)", extra={"input": self.name})
            return
        if self.state == "up":
            self.reconnects += 1
            if status.last_error is not None:
                self.last_error = _describe(status.last_error)
            log.warning("input lost", extra={"input": self.name, "reason": str(status.last_error)})
        self.state = "retrying"

    async def _serve(self, session: MqttSession, sink: Sink) -> None:
        for topic, _ in self.parsers:
            try:
                await session.subscribe(topic, qos=1)
            except MqttDisconnected:
                pass  # remembered: made again on the next connect
            except MqttSubscribeError as exc:
                log.error(
                    "local broker refused a subscription",
                    extra={"input": self.name, "reason": str(exc)},
                )
        self._subscribed = True
        if session.connected:
            self._up(session.status)
        acks = _Acks()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(acks.run(), name=f"input[{self.name}].acks")
                async for msg in session.messages():
                    self._deliver(sink, msg, acks)
        finally:
            # Stopping (or a config swap): the acks the agent gave after its last commit go
            # out, and the broker has read them before the connection closes.
            if session.connected:
                await acks.release()
                await self._acks_processed(session)

    async def _acks_processed(self, session: MqttSession) -> None:
        """Wait (briefly) until the broker has read the PUBACKs sent so far.

        The broker keeps pushing messages, so the socket usually has unread data when it is
        closed: the kernel then sends RST, and PUBACKs the broker had not read yet are lost,
        making it redeliver (and the processors count twice) messages that were committed.
        The broker handles a client's packets in order, so the PUBACK of a QoS 1 publish
        (an empty message on a topic of our own, or a refusal) proves the earlier ones were read.
        """
        with contextlib.suppress(TimeoutError, MqttError):
            async with asyncio.timeout(self.CLOSING_TIMEOUT_S):
                await session.publish(f"{self.client_id}/closing", b"", qos=1)

    def _deliver(self, sink: Sink, msg: Message, acks: _Acks) -> None:
        self.received += 1
        topic, payload = msg.topic, msg.payload
        ack = functools.partial(acks.add, msg)

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


class _Acks:
    """The hand-off between the agent's synchronous ``ack()`` (called after the spool
    commit) and the session's awaitable :meth:`Message.ack`: messages to acknowledge,
    released by the input's ``acks`` task in the order the agent acked them."""

    def __init__(self) -> None:
        self._todo: deque[Message] = deque()
        self._wake = asyncio.Event()

    def add(self, msg: Message) -> None:
        self._todo.append(msg)
        self._wake.set()

    async def release(self) -> None:
        todo = self._todo
        while todo:
            await todo.popleft().ack()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.release()


def _describe(exc: BaseException) -> str:
    """``ECONNREFUSED: ...`` when the error carries an errno, else its text."""
    name = errno_name(exc)
    return f"{name}: {exc}" if name else str(exc)
