"""Commands to one gateway that wait for its answer, and the fleet's clock checks.

::

    POST /v1/gateways/{gw}/commands/{name} (api.routes._commands)
      └─▶ GatewayCommands.request(gw, cmd, args, timeout)
            future registered under a fresh correlation ─▶ BrokerLink.publish(cmd topic,
            response topic .../cmd/response/<api client id>, correlation, expiry = timeout)
            ... the broker link's response handler (event loop) ─▶ on_response: the future
            gets (CommandResponse, arrival time); not answered within the timeout ─▶
            CommandTimeout, and a late answer finds no future (counted, dropped)

A request is published with an MQTT v5 message expiry equal to its timeout: a gateway that
is offline does not find a stale ``restart`` queued in its session when it comes back. (The
3.1.1 form of the cluster profile has no expiry; docs/operations.md says so.) At most
:data:`MAX_PENDING` requests wait at once (503 beyond). The gap repair's ``resend`` answers
arrive on the same response topic; each handler takes only its own correlations.

``sync-time-check`` is NTP's exchange over the broker (:mod:`edge_agent._remote_ops`): t1 (in
the request) and t4 (the answer's arrival) are this API's clock, t2/t3 the gateway's; the
offset ``((t2 - t1) + (t3 - t4)) / 2`` is within ± half the round trip. The result is kept
per gateway (:attr:`GatewayCommands.clocks`, the fleet view) and sent back to the gateway
(``{"record": ...}``) so its health reports it too, which survives a restart of this API.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Final

from api._errors import UpstreamUnavailable
from api.state._broker import BrokerLink
from telemetry import CommandRequest, CommandResponse, PayloadError, decode_message, encode_message

__all__ = ["ClockCheck", "CommandAnswer", "CommandTimeout", "GatewayCommands"]

log: Final = logging.getLogger("api.commands")

#: Requests waiting for an answer at once (all callers together).
MAX_PENDING: Final = 1000
#: How long the record of a clock check may take (the check itself has succeeded).
_RECORD_WAIT_S: Final = 5.0


class CommandTimeout(Exception):
    """No answer within the timeout (gateway offline, or too slow)."""


@dataclass(frozen=True, slots=True)
class CommandAnswer:
    """A gateway's answer and when it arrived (this API's clock, ns)."""

    response: CommandResponse
    arrived_ns: int
    sent_ns: int

    @property
    def elapsed_s(self) -> float:
        return round((self.arrived_ns - self.sent_ns) / 1e9, 6)


@dataclass(frozen=True, slots=True)
class ClockCheck:
    """One gateway's clock against this API's: offset (gateway minus server) and round trip."""

    offset_s: float
    delay_s: float
    checked_ns: int
    threshold_s: float

    @property
    def off(self) -> bool:
        return abs(self.offset_s) > self.threshold_s


class GatewayCommands:
    """Sends commands and matches their answers; holds the last clock check per gateway."""

    def __init__(self, broker: BrokerLink) -> None:
        self.broker = broker
        self._pending: dict[bytes, asyncio.Future[CommandAnswer]] = {}
        self._sent: dict[bytes, int] = {}
        #: Gateway -> its last clock check through this API.
        self.clocks: dict[str, ClockCheck] = {}
        #: Answers that came after their request timed out, or could not be decoded.
        self.late = 0
        self.invalid = 0
        broker.on_response(self.on_response)

    async def request(
        self, gateway: str, cmd: str, args: dict[str, Any], *, timeout_s: float
    ) -> CommandAnswer:
        """Publish ``cmd`` to ``gateway`` and wait up to ``timeout_s`` for its answer.
        :class:`CommandTimeout` when none comes, :class:`UpstreamUnavailable` when the
        broker does not take the request."""
        if len(self._pending) >= MAX_PENDING:
            raise UpstreamUnavailable(f"{MAX_PENDING} commands are waiting for answers already")
        corr = uuid.uuid4().bytes
        fut: asyncio.Future[CommandAnswer] = asyncio.get_running_loop().create_future()
        # Registered before publishing: the answer can come before the PUBACK is seen here.
        self._pending[corr] = fut
        deadline = time.monotonic() + timeout_s
        try:
            sent = time.time_ns()
            self._sent[corr] = sent
            if cmd == "sync-time-check" and not args:  # the check itself (not its record)
                args = {"t1_ns": sent}
            payload = encode_message(CommandRequest(cmd=cmd, args=args))
            await self.broker.publish(
                self.broker.topics.command(gateway),
                payload,
                response_topic=self.broker.response_topic(gateway),
                correlation=corr,
                wait_s=max(0.1, min(timeout_s, 10.0)),
                expiry_s=max(1, round(timeout_s)),
            )
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    return await fut
            except TimeoutError:
                raise CommandTimeout(
                    f"gateway {gateway!r} did not answer {cmd!r} within {timeout_s:g} s"
                ) from None
        finally:
            self._pending.pop(corr, None)
            self._sent.pop(corr, None)

    def on_response(self, topic: str, correlation: bytes | None, payload: bytes) -> None:
        """An answer on this API's response topic (event loop); others' are ignored."""
        fut = self._pending.get(correlation) if correlation is not None else None
        if fut is None:
            if correlation is not None and len(correlation) == 16:
                self.late += 1  # ours or gap repair's: gap repair counts its own
            return
        if fut.done():
            return
        arrived = time.time_ns()
        try:
            resp = decode_message(payload, CommandResponse)
        except PayloadError as exc:
            self.invalid += 1
            resp = CommandResponse(ok=False, error=f"invalid answer from the gateway: {exc}")
        fut.set_result(CommandAnswer(resp, arrived, self._sent.get(correlation or b"", arrived)))

    async def check_clock(
        self, gateway: str, *, timeout_s: float, threshold_s: float
    ) -> tuple[CommandAnswer, ClockCheck | None, str | None]:
        """``sync-time-check``: the exchange, the offset, and its record on the gateway.
        Returns the answer, the check (None when the answer has no usable time stamps) and
        why the record failed (None: recorded)."""
        started = time.monotonic()
        answer = await self.request(gateway, "sync-time-check", {}, timeout_s=timeout_s)
        resp = answer.response
        if not resp.ok:
            return answer, None, None
        t2, t3 = resp.result.get("t2_ns"), resp.result.get("t3_ns")
        t1, t4 = answer.sent_ns, answer.arrived_ns
        if not (_ns(t2) and _ns(t3)):
            return answer, None, "the answer has no t2_ns/t3_ns time stamps"
        assert isinstance(t2, int)
        assert isinstance(t3, int)
        check = ClockCheck(
            offset_s=round(((t2 - t1) + (t3 - t4)) / 2e9, 6),
            delay_s=round(max(0, (t4 - t1) - (t3 - t2)) / 1e9, 6),
            checked_ns=t4,
            threshold_s=threshold_s,
        )
        self.clocks[gateway] = check
        log.log(
            logging.WARNING if check.off else logging.INFO,
            "gateway clock checked" + (": clock off" if check.off else ""),
            extra={"gateway": gateway, "offset_s": check.offset_s, "delay_s": check.delay_s},
        )
        record = {
            "offset_s": check.offset_s, "delay_s": check.delay_s,
            "checked_ts": check.checked_ns, "threshold_s": threshold_s,
        }
        left = timeout_s - (time.monotonic() - started)
        try:
            ack = await self.request(
                gateway, "sync-time-check", {"record": record},
                timeout_s=max(0.5, min(_RECORD_WAIT_S, left)),
            )
        except (CommandTimeout, UpstreamUnavailable) as exc:
            return answer, check, str(exc)
        return answer, check, None if ack.response.ok else ack.response.error


def _ns(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0
