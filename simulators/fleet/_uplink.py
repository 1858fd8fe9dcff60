"""Each simulated gateway's connection to the broker: its own MQTT session, birth and will.

One task per gateway (``fleet[<gw>].uplink``, in the fleet's task group)::

    down ──(no fault)──▶ enter the session (TCP + TLS + CONNECT, at most 64 at once; the
                         session publishes the birth on every connect) ──▶ up
    up: answer commands beside it (fleet[<gw>].commands) until
        a fault cuts it: abort, no DISCONNECT, so the broker publishes the will ──▶ down
        the fleet stops: publish the death ``shutdown``, wait for its PUBACK, DISCONNECT

Each connection is a fresh clean-start client; the spool is the session (the sender replays
it on every connect). With ``FleetConfig.protocol`` ``mqtt311`` (a NATS JetStream cluster)
the session speaks MQTT 3.1.1 and fails over between ``FleetConfig.addresses`` as the edge
agent's uplink does: a failed connect or a lost connection moves on to the next node.
The session reconnects by itself after a loss; a refused or failed first connect is retried
here on the same capped, jittered schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import random
import ssl
import time
from collections.abc import Callable
from typing import Final

from pydantic import SecretStr

from foundation import Backoff, BrokerAccess
from foundation.mqtt import (
    MqttConnectError,
    MqttError,
    MqttSession,
    Outgoing,
    SessionConfig,
    SessionStatus,
)
from simulators._scenario import PublishSpec
from simulators.fleet._commands import CommandAnswerer
from simulators.fleet._config import FleetConfig, FleetStats
from simulators.fleet._gateway import Gateway
from simulators.fleet._sending import FleetSender
from telemetry import Birth, Death, encode_message

__all__ = ["GatewayUplinks", "cut", "wake"]

#: Sessions entering (TCP + TLS + CONNECT in the executor) at the same time.
_CONNECTS_AT_ONCE: Final = 64
#: The reconnect schedule of a gateway: full jitter, 0.5 s doubling up to 30 s.
_RECONNECT: Final = Backoff(initial=0.5, maximum=30.0, multiplier=2.0, jitter=1.0)
_SHUTDOWN_S: Final = 5.0


class GatewayUplinks:
    """The connections of a fleet's gateways."""

    def __init__(
        self,
        *,
        config: FleetConfig,
        publish: PublishSpec,
        stats: FleetStats,
        sender: FleetSender,
        commands: CommandAnswerer,
        birth: Callable[[Gateway], Birth],
        sim_time_ns: Callable[[], int],
        rng: random.Random,
    ) -> None:
        self.config = config
        self.publish = publish
        self.stats = stats
        self.sender = sender
        self.commands = commands
        self._birth = birth
        self._sim_time_ns = sim_time_ns
        self._rng = rng
        self._access: BrokerAccess | None = None
        self._ssl: ssl.SSLContext | None = None
        self._slots: asyncio.Semaphore | None = None
        self.closing = False
        self._shutdown_at = math.inf

    def open(self, access: BrokerAccess, ssl_context: ssl.SSLContext | None) -> None:
        """Before a run: the credentials (password read) and TLS context it connects with."""
        self._access = access
        self._ssl = ssl_context
        self._slots = None  # made on the run's own event loop
        self.closing = False
        self._shutdown_at = math.inf

    def begin_shutdown(self, gateways: list[Gateway]) -> None:
        """Every gateway task publishes its death (``shutdown``), waits for the PUBACK (at
        most ``_SHUTDOWN_S`` in all) and disconnects; the task group waits for them."""
        self.closing = True
        self._shutdown_at = time.monotonic() + _SHUTDOWN_S
        for gw in gateways:
            wake(gw)

    def _session_config(self, gw: Gateway) -> SessionConfig:
        cfg = self.config
        access = self._access
        assert access is not None
        if cfg.credentials is not None:
            user, password = cfg.credentials(gw.id)
            access = access.model_copy(
                update={"username": user, "password": SecretStr(password), "password_file": None}
            )
        return SessionConfig(
            host=cfg.host,
            port=cfg.port,
            # MQTT 3.1.1 (a NATS cluster): no properties, no session expiry; the will and
            # the birth are the same messages, the spool is the session as with v5.
            version="3.1.1" if cfg.protocol == "mqtt311" else "5",
            hosts=_rotated(cfg.addresses, gw.index if cfg.spread_hosts else 0) if cfg.hosts else (),
            client_id=f"{cfg.client_prefix}-{gw.id}",
            access=access,
            ssl_context=self._ssl,
            keepalive_s=self.publish.keepalive_s,
            connect_timeout_s=cfg.connect_timeout_s,
            clean_start=True,
            # The batches' window plus room for the birth, the death and health reports.
            max_inflight=self.publish.inflight_window + 8,
            will=Outgoing(
                topic=gw.status_topic,
                payload=encode_message(Death(gw=gw.id, reason="lost")),
                retain=True,
            ),
            birth=lambda: Outgoing(
                topic=gw.status_topic, payload=encode_message(self._birth(gw)), retain=True
            ),
            backoff=_RECONNECT,
            name=f"fleet[{gw.id}].mqtt",
        )

    async def run(self, gw: Gateway, first: asyncio.Future[None] | None) -> None:
        """One gateway's connection: up while neither cut by a fault nor stopped. ``first``
        gets the outcome of the first connect (a refusal ends the task there)."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(_CONNECTS_AT_ONCE)
        attempt = 0
        while not self.closing:
            if gw.down:
                attempt = 0
                await _wait(gw)
                continue
            session = MqttSession(
                self._session_config(gw),
                on_connect=functools.partial(self._on_up, gw),
                on_disconnect=functools.partial(self._on_down, gw),
            )
            gw.state = "connecting"
            gw.session = session  # _on_up (inside __aenter__) fills the window already
            try:
                async with contextlib.AsyncExitStack() as stack:
                    async with self._slots:
                        await stack.enter_async_context(session)
                    attempt = 0
                    if first is not None:
                        first.set_result(None)
                        first = None
                    await self._serve(gw, session)
            except MqttConnectError as exc:
                self.stats.connect_errors += 1
                self.stats.refused += exc.reason_code is not None
                self.stats.last_error = f"{gw.id}: {exc}"
                if first is not None:
                    first.set_exception(exc)
                    return
                gw.state = "down"
                delay = _RECONNECT.delay(attempt, self._rng)
                attempt += 1
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await _wait(gw)
            finally:
                gw.session = None
                gw.state = "down"

    async def _serve(self, gw: Gateway, session: MqttSession) -> None:
        """Hold the session; answer commands beside it while it lasts."""
        async with asyncio.TaskGroup() as tg:
            reader = None
            if self.config.commands:
                reader = tg.create_task(
                    self.commands.serve(gw, session), name=f"fleet[{gw.id}].commands"
                )
            try:
                await self._hold(gw, session)
            finally:
                if reader is not None:
                    reader.cancel()  # the session's message stream ends only at its exit

    async def _hold(self, gw: Gateway, session: MqttSession) -> None:
        """Keep the session until a fault cuts it or the fleet stops."""
        while True:
            if gw.down:
                session.abort()  # no DISCONNECT: the broker publishes the will
                return
            if self.closing:
                await self._goodbye(gw, session)
                return
            await _wait(gw)

    async def _goodbye(self, gw: Gateway, session: MqttSession) -> None:
        """Publish the death (``shutdown``) and wait for its PUBACK; DISCONNECT follows."""
        if not session.connected:
            return
        death = Death(gw=gw.id, ts=self._sim_time_ns(), reason="shutdown")
        with contextlib.suppress(MqttError, TimeoutError):
            async with asyncio.timeout(max(0.0, self._shutdown_at - time.monotonic())):
                await session.publish(gw.status_topic, encode_message(death), retain=True)

    def _count_failures(self, gw: Gateway, status: SessionStatus) -> None:
        """Failed reconnects inside the session since we last looked."""
        new = status.connect_failures - gw.failures_seen
        if new > 0:
            gw.failures_seen = status.connect_failures
            self.stats.connect_errors += new
            err = status.last_error
            if isinstance(err, MqttConnectError) and err.reason_code is not None:
                self.stats.refused += 1

    def _on_up(self, gw: Gateway, status: SessionStatus) -> None:
        """Connected (the session published the birth): replay the spool, oldest first."""
        self._count_failures(gw, status)
        gw.state = "up"
        self.stats.connects += 1
        self.stats.online += 1
        self.sender.connected(gw, status.epoch)

    def _on_down(self, gw: Gateway, status: SessionStatus) -> None:
        self._count_failures(gw, status)
        if gw.state == "up":
            self.stats.online -= 1
            if not self.closing:
                self.stats.connection_losses += 1
        gw.state = "connecting"
        self.sender.disconnected(gw)
        if status.last_error is not None:
            self.stats.last_error = f"{gw.id}: {status.last_error}"


def _rotated(addresses: tuple[tuple[str, int], ...], start: int) -> tuple[tuple[str, int], ...]:
    """The failover order of a gateway that starts at ``addresses[start mod n]``."""
    k = start % len(addresses)
    return addresses[k:] + addresses[:k]


def wake(gw: Gateway) -> None:
    """Make the gateway's task look at its state (a fault began or ended, the fleet stops)."""
    if gw.wake is not None:
        gw.wake.set()


def cut(gw: Gateway) -> None:
    """Lose the uplink abruptly: no DISCONNECT, so the broker publishes the will."""
    if gw.session is not None:
        gw.session.abort()


async def _wait(gw: Gateway) -> None:
    wake_event = gw.wake
    assert wake_event is not None
    await wake_event.wait()
    wake_event.clear()
