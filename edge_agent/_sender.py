"""What the uplink publishes on a connection: control messages, then spooled batches.

::

    Sender.serve(session) ── per connection (session epoch):
      boundary = spool.max_id()
      loop: spool.delivered(acked) ─▶ held control messages ─▶ resend ─▶ 0x10 retries ─▶
            _pick (newest live / oldest backlog, alternating) ─▶ publish_nowait ─▶ wait
      PUBACK future ─▶ _on_puback: < 0x80 delivered │ 0x10 kept, sent again │ >= 0x80 refused
                                   │ lost with the connection: still waiting in the spool

The rules (backlog and live data, 0x10, resend) are in :mod:`edge_agent._uplink`; the window,
what a PUBACK reason means and the 0x10 hold are :class:`foundation.SendPolicy`, the same
object the simulated fleet (``simulators.fleet``) sends by. Batches
are tracked by spool id and by the connection they went out on: a PUBACK can only come on
the connection its batch was published on (:mod:`foundation.mqtt` fails the rest when the
connection is lost), and a new connection re-reads the waiting batches from the spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from typing import Final, Literal

from edge_agent._spool import Spool, SpooledBatch
from foundation import SendPolicy
from foundation.mqtt import (
    MqttDisconnected,
    MqttSession,
    MqttWindowFull,
    publish_properties,
)

__all__ = ["Sender", "SenderStats"]

log: Final = logging.getLogger("edge_agent.uplink")

#: Control messages held while the publish window is full; more are refused.
_CONTROL_PENDING_MAX: Final = 1000

_Control = tuple[str, bytes, Literal[0, 1, 2], bool, bytes | None]


class SenderStats:
    __slots__ = (
        "acked_batches",
        "acked_readings",
        "published_batches",
        "resent_batches",
        "unrouted_batches",
    )

    def __init__(self) -> None:
        self.published_batches = 0
        self.acked_batches = 0
        self.acked_readings = 0
        #: Delivered batches published again on a ``resend`` request.
        self.resent_batches = 0
        #: PUBACKs with reason 0x10 "No matching subscribers": the broker took the batch and
        #: delivered it to nobody (e.g. ingest's shared subscription not back yet after a
        #: broker restart). Such a batch stays in the spool and is sent again.
        self.unrouted_batches = 0


class Sender:
    """Publishes on the uplink session: at most ``window`` batches without PUBACK."""

    def __init__(self, *, spool: Spool, stats: SenderStats, topic: str, window: int) -> None:
        self.spool = spool
        self.stats = stats
        self.topic = topic
        self.window = window
        self.policy = SendPolicy(window=window)
        #: Set when there is something to do: new batches, a PUBACK, a connection change.
        self.wake = asyncio.Event()
        #: No new picks (shutdown); what is in flight, held or asked for still goes.
        self.stopping = False
        #: The connection (session epoch) being served, and the batches in flight on it.
        self._epoch = 0
        self.inflight: dict[int, SpooledBatch] = {}
        self._acked: list[SpooledBatch] = []
        #: Batches the broker routed to nobody, oldest first, sent again when
        #: ``_unrouted_hold`` ends.
        self._unrouted: list[SpooledBatch] = []
        self._unrouted_hold = self.policy.unrouted_hold()
        #: Delivered batches asked for again, oldest first, published before new picks.
        self._resend: list[SpooledBatch] = []
        #: Control messages that found the publish window full, sent before new batches.
        self._control: deque[_Control] = deque()

    def resend(self, batches: list[SpooledBatch]) -> None:
        known = {b.id for b in self._resend}
        self._resend.extend(b for b in batches if b.id not in known)
        self._resend.sort(key=lambda b: b.id)
        self.wake.set()

    def publish_control(
        self,
        session: MqttSession,
        topic: str,
        payload: bytes,
        *,
        qos: Literal[0, 1, 2],
        retain: bool,
        correlation: bytes | None,
    ) -> bool:
        """Publish now, or hold it until the window has room; False if not connected."""
        if self._control:  # keep the order of what is held
            return self._hold((topic, payload, qos, retain, correlation))
        try:
            self._publish_control(session, (topic, payload, qos, retain, correlation))
        except MqttWindowFull:
            return self._hold((topic, payload, qos, retain, correlation))
        except MqttDisconnected:
            return False
        return True

    def _hold(self, control: _Control) -> bool:
        if len(self._control) >= _CONTROL_PENDING_MAX:
            return False
        self._control.append(control)
        self.wake.set()
        return True

    def _publish_control(self, session: MqttSession, control: _Control) -> None:
        topic, payload, qos, retain, corr = control
        # MQTT 3.1.1 has no properties: there the correlation travels in the answer's body.
        v5 = session.config.version == "5"
        props = None if corr is None or not v5 else publish_properties(correlation_data=corr)
        fut = session.publish_nowait(topic, payload, qos=qos, retain=retain, properties=props)
        fut.add_done_callback(self._control_done)

    def _control_done(self, fut: asyncio.Future[int]) -> None:
        if not fut.cancelled():
            fut.exception()  # a control message lost with its connection is not re-sent
        if self._control:
            self.wake.set()

    async def serve(self, session: MqttSession) -> None:
        """Serve every connection of ``session`` until it closes (or cancelled)."""
        while True:
            try:
                await session.wait_connected()
            except MqttDisconnected:
                return  # the session is closing
            await self._connection(session, session.epoch)
            self._apply_acks()

    async def _connection(self, session: MqttSession, epoch: int) -> None:
        """Publish on one connection until it is lost."""
        self._epoch = epoch
        self.inflight.clear()
        self._unrouted = []  # a new connection re-reads the spool from its start
        self._unrouted_hold.release()
        self._resend = []
        self._control.clear()
        boundary = self.spool.max_id()
        cursor = 0  # highest id the oldest-first side has published on this connection
        live_turn = True
        loop = asyncio.get_running_loop()
        while session.connected and session.epoch == epoch:
            self._apply_acks()
            while self._control:
                try:
                    self._publish_control(session, self._control[0])
                except (MqttWindowFull, MqttDisconnected):
                    break
                self._control.popleft()
            free = self.policy.free(len(self.inflight), session.window)
            if self._resend and free > 0:
                busy = set(self.inflight) | {b.id for b in self._unrouted}
                again = [b for b in self._resend[:free] if b.id not in busy]
                self._resend = self._resend[free:]
                for batch in again:
                    if not self._send(session, batch):
                        break
                    self.stats.resent_batches += 1
                free = self.policy.free(len(self.inflight), session.window)
            if self._unrouted and self._unrouted_hold.ready(loop.time()) and free > 0:
                again, self._unrouted = self._unrouted[:free], self._unrouted[free:]
                if not self._unrouted:
                    self._unrouted_hold.release()
                for batch in again:
                    if not self._send(session, batch):
                        break
                free = self.policy.free(len(self.inflight), session.window)
            if free > 0 and not self.stopping:
                for batch, oldest_side in self._pick(boundary, cursor, free, live_turn):
                    if not self._send(session, batch):
                        break
                    if oldest_side:
                        cursor = max(cursor, batch.id)
                    live_turn = oldest_side
            self.wake.clear()
            if self._acked or not session.connected or session.epoch != epoch:
                continue
            until = self._unrouted_hold.until
            if self._unrouted and until is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, until - loop.time())):
                        await self.wake.wait()
            else:
                await self.wake.wait()

    def _send(self, session: MqttSession, batch: SpooledBatch) -> bool:
        """Publish ``batch`` (QoS 1) and track it until its PUBACK; False when the window is
        full or the connection is gone (the batch stays waiting in the spool)."""
        try:
            fut = session.publish_nowait(self.topic, batch.payload, qos=1)
        except (MqttWindowFull, MqttDisconnected):
            return False
        self.inflight[batch.id] = batch
        fut.add_done_callback(functools.partial(self._on_puback, self._epoch, batch))
        self.stats.published_batches += 1
        return True

    def _pick(
        self, boundary: int, cursor: int, n: int, live_first: bool
    ) -> list[tuple[SpooledBatch, bool]]:
        """Up to ``n`` unsent batches, alternating the newest live batch (sealed after this
        connection began) and the oldest unsent one. Items are (batch, from_oldest_side)."""
        busy = set(self.inflight) | {b.id for b in self._unrouted} | {b.id for b in self._resend}
        oldest = self.spool.oldest(after_id=cursor, exclude=busy, limit=n)
        live = self.spool.newest(above_id=max(boundary, cursor), exclude=busy, limit=n)
        out: list[tuple[SpooledBatch, bool]] = []
        seen: set[int] = set()
        sides = [(live, False), (oldest, True)]
        if not live_first:
            sides.reverse()
        while len(out) < n and (sides[0][0] or sides[1][0]):
            for side, is_oldest in sides:
                while side and side[0].id in seen:
                    side.pop(0)
                if side and len(out) < n:
                    b = side.pop(0)
                    seen.add(b.id)
                    out.append((b, is_oldest))
        return out

    def _on_puback(self, epoch: int, batch: SpooledBatch, fut: asyncio.Future[int]) -> None:
        current = epoch == self._epoch
        if current:
            self.inflight.pop(batch.id, None)
        if fut.cancelled() or fut.exception() is not None:
            # Lost with its connection: still waiting in the spool, replayed on the next.
            self.wake.set()
            return
        reason = fut.result()
        verdict = self.policy.verdict(reason)
        if verdict == "unrouted":
            if not current:
                return  # the next connection re-reads it from the spool
            # Taken and delivered to nobody: not delivered. Keep it and send it again,
            # backing off while nobody subscribes (the policy's hold: 0.2 s doubling to 5 s).
            now = asyncio.get_running_loop().time()
            if self._unrouted_hold.hold(now) and self._unrouted_hold.attempt == 1:
                log.warning(
                    "broker has no subscriber for telemetry (PUBACK 0x10): batches stay "
                    "in the spool and are sent again",
                    extra={"seq": batch.seq},
                )
            self._unrouted.append(batch)
            self._unrouted.sort(key=lambda b: b.id)
            self.stats.unrouted_batches += 1
        elif verdict == "delivered":
            self._acked.append(batch)
            self._unrouted_hold.delivered()
        else:
            log.warning("broker refused a batch", extra={"seq": batch.seq, "reason": reason})
        self.wake.set()

    def _apply_acks(self) -> None:
        acked, self._acked = self._acked, []
        if not acked:
            return
        self.spool.delivered([b.id for b in acked])
        self.stats.acked_batches += len(acked)
        self.stats.acked_readings += sum(b.readings for b in acked)
