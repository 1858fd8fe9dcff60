"""The uplink: spool → central broker over MQTT v5, QoS 1, with presence and control topics.

::

    event loop (agent; no network thread: foundation.mqtt drives the client in the loop)
    ──────────────────────────────────────────────────────────────────────────────────────
    task uplink[gw].run          connect (first connect retried here with the Backoff)
     └─ MqttSession uplink[gw]   task uplink[gw].connection: socket, keepalive, reconnect
          │                      with foundation.Backoff (backoff_initial_s..backoff_max_s,
          │                      full jitter); birth first on every connect, will = death
          ├─ task uplink[gw].sender   spool ─▶ publish_nowait (window) ─▶ PUBACK future
          │   (edge_agent._sender)    ─▶ done callback: delivered / 0x10 kept / refused
          └─ task uplink[gw].control  messages() ─▶ ControlMessage ─▶ agent (config, cmd)

Everything runs on the agent's loop: PUBACKs resolve futures whose callbacks mark batches,
and ``on_connect`` / ``on_disconnect`` hooks keep the link state (health, ``/metrics``).
A failed connect is logged with its errno (``ECONNREFUSED``...).

**Session.** The broker keeps a persistent MQTT v5 session for the gateway (clean start off,
Session Expiry Interval ``broker.session_expiry_s``): config and commands published while the
gateway is offline are queued by the broker and delivered on reconnect. Clean start is off
from the very first connection: mosquitto 2.0.11 does not restore, after a broker restart, a
session that was created with clean start (docs/operations.md). The session carries only the
*inbound* side (subscriptions, queued control messages). Telemetry state lives in the spool:
each connection still gets a fresh MQTT client with empty in-flight state (the session layer
never re-sends a publish by itself), and a reconnect replays unacknowledged batches from the
spool only. The broker keeps no state for QoS 1 messages *from* a client, so a resumed session
holds nothing that would be published twice. What can be doubled, as before, is a batch whose
PUBACK was lost with the connection (at most ``inflight_window`` batches per cut, exact
replays with the same ``seq``), and a control message the broker redelivers (DUP) because its
PUBACK was lost: commands are answered once per correlation id.

**Backlog and live data.** At connect time the highest spool id is the *boundary*: batches at
or below it are backlog, newer ones are live. The sender keeps at most ``inflight_window``
batches unacknowledged and fills free slots alternately with the *newest* unsent live batch
and the *oldest* unsent backlog batch (all slots go to one side when the other is empty). So
the backlog is replayed oldest-first in order while fresh data gets at least half of the
uplink: a day-long backlog never delays live data by more than a window.

**Resend.** :meth:`Uplink.resend` takes delivered batches the spool made waiting again (the
``resend`` command): they are published first, before new picks, within the same window, and
their PUBACK is handled like any other (0x10 keeps them, success marks them delivered again).
A reconnect forgets the list: the new session re-reads the waiting batches from the spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Final, Literal

from pydantic import SecretStr

from edge_agent._config import BrokerConfig
from edge_agent._errors import UplinkError, errno_name
from edge_agent._sender import Sender, SenderStats
from edge_agent._spool import Spool, SpooledBatch
from foundation import Backoff, BrokerAccess, BrokerSetupError
from foundation.mqtt import (
    MqttConnectError,
    MqttDisconnected,
    MqttError,
    MqttSession,
    MqttSubscribeError,
    Outgoing,
    SessionConfig,
    SessionStatus,
)
from telemetry import Death, Topics, encode_message

__all__ = ["ControlMessage", "Uplink", "UplinkStats"]

log: Final = logging.getLogger("edge_agent.uplink")

#: Publish slots beyond ``inflight_window`` for control messages (birth, reports, answers).
_CONTROL_SLOTS: Final = 16


class ControlMessage:
    """A message on a control topic (config, command), handed to the agent's loop.

    ``redelivered``: the broker set DUP (it sent this message before and saw no PUBACK).
    """

    __slots__ = ("correlation", "payload", "redelivered", "response_topic", "topic")

    def __init__(
        self,
        topic: str,
        payload: bytes,
        response_topic: str | None,
        correlation: bytes | None,
        *,
        redelivered: bool = False,
    ) -> None:
        self.topic = topic
        self.payload = payload
        self.response_topic = response_topic
        self.correlation = correlation
        self.redelivered = redelivered


class UplinkStats(SenderStats):
    """The link state and counters (health ``links.uplink``, ``/metrics``)."""

    __slots__ = (
        "connect_failures",
        "connects",
        "last_errno",
        "last_error",
        "losses",
        "resumed_sessions",
        "state",
    )

    def __init__(self) -> None:
        super().__init__()
        #: ``down`` | ``connecting`` | ``up``
        self.state = "down"
        self.connects = 0
        #: Failed connect attempts, and connections lost after they were up.
        self.connect_failures = 0
        self.losses = 0
        #: The latest connect failure or loss (kept after a reconnect), and its symbolic errno.
        self.last_error: str | None = None
        self.last_errno: str | None = None
        #: Connects where the broker still had the gateway's session (CONNACK session present).
        self.resumed_sessions = 0


class Uplink:
    """Publishes spooled batches and control messages; owns the broker session.

    ``birth`` builds the retained birth payload (called on every connect), ``on_control``
    receives config and command messages on the agent's loop.
    """

    def __init__(
        self,
        *,
        gateway: str,
        client_id: str,
        broker: BrokerConfig,
        topics: Topics,
        spool: Spool,
        birth: Callable[[], bytes],
        on_control: Callable[[ControlMessage], None],
    ) -> None:
        self.gateway = gateway
        self.client_id = client_id
        self.cfg = broker
        self.topics = topics
        self.spool = spool
        self._birth = birth
        self._on_control = on_control
        self.stats = UplinkStats()
        self._sender = Sender(
            spool=spool,
            stats=self.stats,
            topic=topics.telemetry(gateway),
            window=broker.inflight_window,
        )
        self._quit = asyncio.Event()
        #: Set while no session is entered (the run task left it, or never entered one).
        self._left = asyncio.Event()
        self._left.set()
        self._session: MqttSession | None = None
        #: The control subscriptions were made once on this session: only then ``up``.
        self._subscribed = False
        self._stopping = False
        self._status_topic = topics.status(gateway)
        # Files are read once, here: a missing CA or password file stops the agent at
        # start-up with the key and the file named, not at the first reconnect.
        try:
            tls_context = None if broker.tls is None else broker.tls.ssl_context("broker.tls.")
            password = broker.read_password("broker.password_file")
        except BrokerSetupError as exc:
            raise UplinkError(str(exc)) from exc
        self._backoff = Backoff(
            initial=broker.backoff_initial_s,
            maximum=broker.backoff_max_s,
            multiplier=2.0,
            jitter=1.0,
        )
        status = self._status_topic
        self._session_config = SessionConfig(
            host=broker.host,
            port=broker.port,
            client_id=client_id,
            access=BrokerAccess(
                username=broker.username,
                password=None if password is None else SecretStr(password),
                tls=broker.tls,
            ),
            ssl_context=tls_context,
            keepalive_s=broker.keepalive_s,
            connect_timeout_s=broker.connect_timeout_s,
            clean_start=False,
            # 3.1.1 (the cluster profile) has no session expiry: the broker keeps the session.
            version="5" if broker.protocol == "mqtt5" else "3.1.1",
            session_expiry_s=broker.session_expiry_s if broker.protocol == "mqtt5" else None,
            hosts=broker.addresses if broker.hosts else (),
            max_inflight=broker.inflight_window + _CONTROL_SLOTS,
            will=Outgoing(
                topic=status,
                payload=encode_message(Death(gw=gateway, reason="lost")),
                retain=True,
            ),
            birth=lambda: Outgoing(topic=status, payload=self._birth(), retain=True),
            # Subscribing again is harmless when the session was resumed, and needed when it
            # expired; with retain handling 1 the retained desired config only comes with a
            # new subscription (a resumed session already delivered it).
            resubscribe="always",
            backoff=self._backoff,
            name=f"uplink[{gateway}]",
        )

    # -- public API (agent loop) ---------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """Connected, with the control subscriptions made (``edge_uplink_up``)."""
        s = self._session
        return s is not None and s.connected and self._subscribed

    @property
    def inflight(self) -> int:
        return len(self._sender.inflight)

    def notify(self) -> None:
        """New batches are in the spool."""
        self._sender.wake.set()

    def resend(self, batches: list[SpooledBatch]) -> None:
        """Publish again batches the spool has made waiting again (:meth:`Spool.redeliver`).

        Not connected: nothing to do here, the next session replays them from the spool.
        """
        if not batches or not self.connected:
            return
        self._sender.resend(batches)

    def publish_control(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: Literal[0, 1, 2] = 1,
        retain: bool = False,
        correlation: bytes | None = None,
    ) -> bool:
        """Publish a control-plane message if connected; returns whether it was queued
        (held briefly when the publish window is full)."""
        s = self._session
        if s is None or not s.connected:
            return False
        return self._sender.publish_control(
            s, topic, payload, qos=qos, retain=retain, correlation=correlation
        )

    async def run(self) -> None:
        """Connect, replay and publish until cancelled or closed; the session reconnects by
        itself after a loss, the first connect is retried here with the same backoff."""
        attempt = 0
        while not self._stopping:
            self.stats.state = "connecting"
            try:
                async with MqttSession(
                    self._session_config, on_connect=self._up, on_disconnect=self._down
                ) as session:
                    attempt = 0
                    self._session = session
                    self._left.clear()
                    try:
                        await self._serve(session)
                    finally:
                        self._session = None
                        self._subscribed = False
            except MqttConnectError as exc:
                delay = self._backoff.delay(attempt)
                attempt += 1
                self.stats.connect_failures += 1
                self.stats.last_error = str(exc)
                self.stats.last_errno = errno_name(exc)
                log.warning(
                    "uplink connect failed; retrying",
                    extra={
                        "broker": self._where(),
                        "errno": errno_name(exc),
                        "reason_code": exc.reason_code,
                        "reason": str(exc),
                        "retry_in_s": round(delay, 3),
                    },
                )
                self.stats.state = "down"
                await asyncio.sleep(delay)
            finally:
                self.stats.state = "down"
                self._sender.inflight.clear()
                self._left.set()

    async def close(self, *, grace_s: float = 3.0) -> None:
        """Clean shutdown while connected: let in-flight batches be acknowledged briefly,
        publish the retained death message (``reason="shutdown"``) and disconnect."""
        s = self._session
        self._stopping = self._sender.stopping = True
        if s is None or not s.connected:
            self._quit.set()
            return
        sender = self._sender
        try:
            async with asyncio.timeout(grace_s):
                while sender.inflight and s.connected:
                    sender.wake.clear()
                    await sender.wake.wait()
        except TimeoutError:
            log.warning("shutdown with batches still in flight (they stay in the spool)")
        death = encode_message(Death(gw=self.gateway, ts=time.time_ns(), reason="shutdown"))
        try:
            async with asyncio.timeout(grace_s):
                await s.publish(self._status_topic, death, qos=1, retain=True)
        except (TimeoutError, MqttError):
            log.warning("death message not acknowledged before shutdown")
        self._quit.set()
        # The run task leaves the session: DISCONNECT, so the broker keeps the death and
        # does not publish the will.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_s):
                await self._left.wait()

    # -- connection ------------------------------------------------------------------------------
    def _where(self) -> str:
        s = self._session
        return s.url if s is not None else f"{self.cfg.host}:{self.cfg.port}"

    def _up(self, status: SessionStatus) -> None:
        if not self._subscribed:
            return  # the first connect: _serve subscribes, then reports
        self.stats.connects += 1
        self.stats.resumed_sessions += status.session_present
        self.stats.state = "up"
        log.info(
            "uplink connected",
            extra={"broker": self._where(), "session_present": status.session_present},
        )
        self._sender.wake.set()

    def _down(self, status: SessionStatus) -> None:
        self.stats.state = "down"
        if not self._stopping:
            self.stats.losses += 1
            if status.last_error is not None:
                self.stats.last_error = str(status.last_error)
                self.stats.last_errno = errno_name(status.last_error)
            log.warning(
                "uplink lost",
                extra={"broker": self._where(), "reason": str(status.last_error)},
            )
        self._sender.wake.set()

    async def _serve(self, session: MqttSession) -> None:
        for topic in (self.topics.config_desired(self.gateway), self.topics.command(self.gateway)):
            try:
                # retain handling is v5; a 3.1.1 broker sends the retained config on every
                # subscribe (an unchanged desired config is applied once, by its version).
                v5 = self.cfg.protocol == "mqtt5"
                await session.subscribe(topic, qos=1, retain_handling=1 if v5 else 0)
            except MqttDisconnected:
                pass  # remembered: made again on the next connect
            except MqttSubscribeError as exc:
                log.error("broker refused a control subscription", extra={"reason": str(exc)})
        self._subscribed = True
        if session.connected:
            self._up(session.status)
        gw = self.gateway
        async with asyncio.TaskGroup() as tg:
            control = tg.create_task(self._receive(session), name=f"uplink[{gw}].control")
            sender = tg.create_task(self._sender.serve(session), name=f"uplink[{gw}].sender")
            await self._quit.wait()
            sender.cancel()
            control.cancel()

    async def _receive(self, session: MqttSession) -> None:
        async for msg in session.messages():
            control = ControlMessage(
                msg.topic,
                msg.payload,
                msg.response_topic,
                msg.correlation_data,
                redelivered=msg.dup,
            )
            # Not "log and carry on" silently: one control message (from outside the gateway)
            # that makes the agent raise is logged with its traceback; it must not end the
            # uplink, which carries the telemetry.
            try:
                self._on_control(control)
            except Exception:
                log.exception("control message failed", extra={"topic": msg.topic[:200]})
