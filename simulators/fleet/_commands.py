"""Commands to a simulated gateway, answered as ``edge_agent._commands`` answers them.

One task per connected gateway (``fleet[<gw>].commands``) subscribes to ``<gw>/cmd`` and
answers ``ping``, ``reannounce``, ``health`` and ``resend`` on the request's response topic
with its correlation data, or over MQTT 3.1.1 (the cluster profile) on the body's
``reply_to`` with ``correlation`` echoed in the answer's body (:func:`telemetry.reply_address`;
same results, same errors as the edge agent; the ``resend``
arguments and result are the contract's :func:`telemetry.parse_resend_args` and
:func:`telemetry.resend_result`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import msgspec

from foundation.mqtt import (
    Message,
    MqttDisconnected,
    MqttError,
    MqttSession,
    MqttSubscribeError,
    publish_properties,
)
from simulators.fleet._config import FleetStats
from simulators.fleet._gateway import Gateway
from simulators.fleet._sending import FleetSender
from telemetry import (
    Birth,
    CommandRequest,
    CommandResponse,
    Health,
    InvalidCommand,
    PayloadError,
    decode_message,
    encode_message,
    parse_resend_args,
    reply_address,
)

__all__ = ["CommandAnswerer"]


class CommandAnswerer:
    """Answers the commands of every gateway of a fleet."""

    def __init__(
        self,
        *,
        stats: FleetStats,
        sender: FleetSender,
        timeout_s: float,
        birth: Callable[[Gateway], Birth],
        health: Callable[[Gateway, float], Health],
    ) -> None:
        self.stats = stats
        self.sender = sender
        self.timeout_s = timeout_s
        self._birth = birth
        self._health = health

    async def serve(self, gw: Gateway, session: MqttSession) -> None:
        """Subscribe to the gateway's ``cmd`` topic and answer each request there."""
        try:
            async with asyncio.timeout(self.timeout_s):
                await session.subscribe(gw.cmd_topic, qos=1)
        except MqttSubscribeError as exc:
            self.stats.command_subscribe_refused += 1
            self.stats.last_error = f"{gw.id}: {exc}"
            return
        except (MqttDisconnected, TimeoutError):
            pass  # remembered: made again on the next connect
        async for msg in session.messages():
            await self._answer(gw, session, msg)

    async def _answer(self, gw: Gateway, session: MqttSession, msg: Message) -> None:
        # MQTT v5: the reply address is in the properties; MQTT 3.1.1 (the cluster profile):
        # in the body (reply_to, correlation), so the body is decoded first.
        req: CommandRequest | None = None
        error: PayloadError | None = None
        try:
            req = decode_message(msg.payload, CommandRequest)
        except PayloadError as exc:  # InvalidCommand included
            error = exc
        reply = reply_address(
            response_topic=msg.response_topic,
            correlation_data=msg.correlation_data,
            reply_to=None if req is None else req.reply_to,
            correlation=None if req is None else req.correlation,
        )
        if reply is None:
            self.stats.commands_unanswered += 1
            return
        echo = req.correlation if reply.in_body and req is not None else None
        try:
            if req is None:
                assert error is not None
                raise error
            resp = CommandResponse(ok=True, result=self._run(gw, session, req), correlation=echo)
            self.stats.commands += 1
        except PayloadError as exc:
            resp = CommandResponse(ok=False, error=str(exc), correlation=echo)
            self.stats.commands_refused += 1
        props = None
        if not reply.in_body and session.config.version == "5":
            props = publish_properties(correlation_data=reply.correlation)
        try:
            async with asyncio.timeout(self.timeout_s):
                await session.publish(reply.topic, encode_message(resp), qos=1, properties=props)
        except (MqttError, TimeoutError):
            self.stats.commands_unanswered += 1  # the requester asks again

    def _run(self, gw: Gateway, session: MqttSession, req: CommandRequest) -> dict[str, Any]:
        if req.cmd == "ping":
            return {
                "pong": True,
                "ts": time.time_ns(),
                "uptime_s": round(time.monotonic() - (gw.boot_mono or self.stats.started_at), 3),
            }
        if req.cmd == "reannounce":
            birth = encode_message(self._birth(gw))
            try:
                session.publish_nowait(gw.status_topic, birth, qos=1, retain=True)
            except MqttError:
                return {"published": False}
            return {"published": True}
        if req.cmd == "health":
            result: dict[str, Any] = msgspec.to_builtins(self._health(gw, time.monotonic()))
            return result
        if req.cmd == "resend":
            return self.sender.resend(gw, parse_resend_args(req.args))
        raise InvalidCommand(
            f"unknown command {req.cmd!r} (known: ping, reannounce, health, resend)"
        )
