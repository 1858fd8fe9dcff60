"""One connection of a session: one paho client, one socket, one epoch, driven in the loop.

::

    socket hand-off (attach)  paho connected in the executor; from then on, loop only:
      add_reader ─▶ loop_read ─▶ _on_connect / _on_message / _on_publish / _on_subscribe
                    (paho's reads served by a ReadAhead: one recv per readable socket;
                    a PUBLISH without properties decoded by handle_publish, not paho)
      call_soon / add_writer ─▶ loop_write   (only while paho has bytes queued)
      call_later(1 s) ─▶ loop_misc           (keepalive PINGREQ)
    in-flight   publish() ─▶ future per mid ◀── PUBACK reason code (_on_publish)
    SUBACKs     subscribe() / unsubscribe() ─▶ future per mid ◀── reason codes
    ack ledger  received messages (manual ack) in receive order ─▶ PUBACK of the acked prefix
    the end     kill() (no DISCONNECT: the will) / paho's close ─▶ ``lost`` ─▶ fail_pending()

**One paho client per connection.** A new connection starts with empty in-flight state,
so the layer never re-sends a publish by itself: a QoS 1 publish whose connection is lost
before its PUBACK fails with :class:`MqttDisconnected`, and the caller (a spool) decides.

**Acks belong to a connection.** With ``manual_ack`` a message is acknowledged only by
:meth:`Message.ack`, and acks are released in receive order (MQTT 4.6). After a connection
loss the broker redelivers every unacknowledged message (persistent session), so an ack for
a message of an older epoch is never sent: it could acknowledge another message that now
carries the same packet id.

**Backpressure.** With manual acks the broker sends at most Receive Maximum unacknowledged
messages. As mosquitto 2.0.11 overshoots that once acks flow, the session also stops reading
the socket while ``max_buffered`` messages wait for the consumer (:meth:`Connection.pause`,
at most keepalive/2 at a time, so the connection stays alive), and TCP pushes back on the
broker.

The connection tells its session what happens through :class:`ConnectionOwner`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any, Final, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from foundation.mqtt._config import SessionConfig
from foundation.mqtt._errors import (
    MqttConfigError,
    MqttConnectError,
    MqttDisconnected,
    MqttError,
)
from foundation.mqtt._inbound import plain_publish
from foundation.mqtt._message import Message, held_properties
from foundation.mqtt._readahead import ReadAhead

__all__ = ["SUCCESS", "Connection", "ConnectionOwner"]

_MISC_EVERY_S: Final = 1.0
#: loop_read() reads one packet; a readable socket usually holds many.
_READS_PER_WAKE: Final = 64
SUCCESS: Final = MQTTErrorCode.MQTT_ERR_SUCCESS


class ConnectionOwner(Protocol):
    """What a connection needs from its session (``MqttSession``)."""

    @property
    def config(self) -> SessionConfig: ...

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def url(self) -> str: ...

    def connack(self, conn: Connection, session_present: bool) -> None:
        """CONNACK accepted, inside paho's read: a new epoch, the birth first."""
        ...

    def deliver(self, msg: Message, conn: Connection) -> None:
        """A received message for the consumer."""
        ...

    def slot_freed(self) -> None:
        """A PUBACK freed a slot of the publish window."""
        ...


class Connection:
    """One paho client, one socket, one epoch. Callbacks run in the event loop."""

    def __init__(self, session: ConnectionOwner, client: mqtt.Client) -> None:
        self.session = session
        self.client = client
        self.loop = session.loop
        self.epoch = 0
        self.fd = -1
        self.tls = False
        self.reader = False
        self.writer = False
        self.flush_pending = False
        self.reading = True
        self.packets = 0
        self.window = session.config.max_inflight
        self.connack: asyncio.Future[tuple[bool, int | None]] = self.loop.create_future()
        self.lost: asyncio.Future[MqttDisconnected] = self.loop.create_future()
        self.inflight: dict[int, asyncio.Future[int]] = {}
        self.subacks: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self.ledger: deque[Message] = deque()
        self.misc: asyncio.TimerHandle | None = None
        self.resume_at: asyncio.TimerHandle | None = None
        self.ahead: ReadAhead | None = None
        self._manual_ack = session.config.manual_ack
        self._v5 = session.config.version == "5"
        self._slot_freed = session.slot_freed
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        self._paho_publish = _take_publish(client, self.handle_publish)

    # -- socket hand-off ------------------------------------------------------------------
    def attach(self) -> None:
        """Take over the socket paho connected in the executor: from now on, loop only."""
        client = self.client
        sock = client.socket()
        if sock is None:
            raise MqttConnectError("no socket after connect", url=self.session.url)
        self.fd = sock.fileno()
        self.tls = isinstance(sock, ssl.SSLSocket)
        self.ahead = _read_ahead(client)
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        self.loop.add_reader(self.fd, self.on_readable)
        self.reader = True
        if client.want_write():
            self._on_register_write(client, None, sock)
        self.misc = self.loop.call_later(_MISC_EVERY_S, self._on_misc)

    def _detach(self) -> None:
        """Stop watching the fd: before it is closed, never after (the number is reused)."""
        if self.reader:
            self.reader = False
            self.loop.remove_reader(self.fd)
        if self.writer:
            self.writer = False
            self.loop.remove_writer(self.fd)
        for handle in (self.misc, self.resume_at):
            if handle is not None:
                handle.cancel()

    def on_readable(self) -> None:
        if not self.reading:
            return
        client = self.client
        for _ in range(_READS_PER_WAKE):
            before = self.packets
            if client.loop_read() != SUCCESS or self.lost.done() or not self.reading:
                return
            if self.packets == before and not self._pending():
                return
        if self._pending():  # epoll does not see bytes already read: come back at once
            self.loop.call_soon(self.on_readable)

    def _pending(self) -> bool:
        """Bytes read off the socket that paho has not parsed yet (read-ahead or TLS)."""
        ahead = self.ahead
        if ahead is not None and ahead.pending:
            return True
        if not self.tls:
            return False
        sock = self.client.socket()
        return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0

    def _on_register_write(self, _c: mqtt.Client, _u: Any, _sock: Any) -> None:
        # Publishes queued in one loop iteration go out in one loop_write; the fd is
        # watched for writability only when the socket buffer is full.
        if not self.flush_pending:
            self.flush_pending = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_pending = False
        if self.lost.done():
            return
        self.client.loop_write()
        if not self.lost.done() and self.client.want_write() and not self.writer:
            self.writer = True
            self.loop.add_writer(self.fd, self._on_writable)

    def _on_writable(self) -> None:
        self.client.loop_write()

    def _on_unregister_write(self, _c: mqtt.Client, _u: Any, _sock: Any) -> None:
        if self.writer:
            self.writer = False
            self.loop.remove_writer(self.fd)

    def _on_socket_close(self, _c: mqtt.Client, _u: Any, _sock: Any) -> None:
        self._detach()
        self._set_lost("connection closed")

    def _on_misc(self) -> None:
        if self.lost.done():
            return
        self.client.loop_misc()
        if not self.lost.done():
            self.misc = self.loop.call_later(_MISC_EVERY_S, self._on_misc)

    # -- backpressure ---------------------------------------------------------------------
    def pause(self) -> None:
        if not self.reading or self.lost.done():
            return
        self.reading = False
        if self.reader:
            self.reader = False
            self.loop.remove_reader(self.fd)
        # Never longer than keepalive/2: the PINGRESP must be read in time.
        delay = self.session.config.keepalive_s / 2
        self.resume_at = self.loop.call_later(delay, self.resume)

    def resume(self) -> None:
        if self.reading or self.lost.done():
            return
        self.reading = True
        if self.resume_at is not None:
            self.resume_at.cancel()
            self.resume_at = None
        if not self.reader:
            self.reader = True
            self.loop.add_reader(self.fd, self.on_readable)
        if self._pending():
            self.loop.call_soon(self.on_readable)

    # -- paho callbacks (inside loop_read / loop_write / loop_misc) -------------------------
    def _on_connect(
        self, _c: mqtt.Client, _u: Any, flags: Any, rc: ReasonCode, props: Properties | None
    ) -> None:
        self.packets += 1
        if self.connack.done():
            return
        if rc.is_failure:
            self.connack.set_exception(
                MqttConnectError(
                    f"broker refused the connection: {rc}",
                    url=self.session.url,
                    reason_code=rc.value,
                )
            )
            return
        server_rm = getattr(props, "ReceiveMaximum", None)
        if server_rm is not None:
            self.window = min(self.window, int(server_rm))
        # Messages may follow CONNACK in this very read: they belong to the new epoch, and
        # the birth goes out before anything else.
        self.session.connack(self, bool(flags.session_present))
        self.connack.set_result((bool(flags.session_present), server_rm))

    def _on_disconnect(
        self, _c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Properties | None
    ) -> None:
        self._set_lost(f"connection lost: {rc}")

    def _set_lost(self, reason: str) -> None:
        if not self.connack.done():
            self.connack.set_exception(
                MqttConnectError(f"closed before CONNACK ({reason})", url=self.session.url)
            )
        if not self.lost.done():
            self.lost.set_result(MqttDisconnected(reason))

    def handle_publish(self) -> MQTTErrorCode:
        """A received PUBLISH (paho's ``_handle_publish``, inside ``loop_read``): one
        without properties straight into a :class:`Message`; anything else through paho's
        decoding to :meth:`_on_message` (foundation.mqtt._inbound)."""
        client = self.client
        in_packet = client._in_packet
        header, packet = in_packet["command"], in_packet["packet"]
        plain = plain_publish(header, packet, self._v5)
        if plain is None:
            rc: MQTTErrorCode = self._paho_publish()
            return rc
        topic, mid, start = plain
        qos = (header >> 1) & 3
        with memoryview(packet) as view:
            payload = bytes(view[start:])
        self._received(topic, payload, qos, bool(header & 1), bool(header & 8), mid, None)
        if qos and not self._manual_ack:
            puback: MQTTErrorCode = client._send_puback(mid)
            return puback
        return SUCCESS

    def _on_message(self, _c: mqtt.Client, _u: Any, m: mqtt.MQTTMessage) -> None:
        payload = m.payload
        self._received(
            m.topic,
            payload if type(payload) is bytes else bytes(payload),
            m.qos,
            bool(m.retain),
            bool(m.dup),
            m.mid,
            held_properties(getattr(m, "properties", None)),
        )

    def _received(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        dup: bool,
        mid: int,
        properties: Properties | None,
    ) -> None:
        self.packets += 1
        manual = self._manual_ack and qos > 0
        msg = Message(
            topic=topic,
            payload=payload,
            qos=qos,
            retain=retain,
            dup=dup,
            mid=mid,
            epoch=self.epoch,
            properties=properties,
            conn=self if manual else None,
        )
        if manual:
            self.ledger.append(msg)
        self.session.deliver(msg, self)

    def _on_publish(
        self, _c: mqtt.Client, _u: Any, mid: int, rc: ReasonCode, _p: Properties | None
    ) -> None:
        self.packets += 1
        fut = self.inflight.pop(mid, None)
        if fut is None:
            return  # QoS 0 written, or a publish nobody waits for
        if not fut.done():
            fut.set_result(rc.value)
        self._slot_freed()

    def _on_subscribe(
        self, _c: mqtt.Client, _u: Any, mid: int, codes: list[ReasonCode], _p: Any
    ) -> None:
        self.packets += 1
        fut = self.subacks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(codes)

    def _on_unsubscribe(
        self, _c: mqtt.Client, _u: Any, mid: int, codes: list[ReasonCode], _p: Any
    ) -> None:
        self._on_subscribe(_c, _u, mid, codes, _p)

    # -- publishing and subscribing -------------------------------------------------------
    def publish(
        self, topic: str, payload: bytes, qos: int, retain: bool, properties: Properties | None
    ) -> asyncio.Future[int]:
        """Hand a PUBLISH to paho; the future resolves to the PUBACK reason code (0 at once
        for QoS 0). The caller has checked the window."""
        if properties is not None and not self._v5:
            raise MqttConfigError("properties", "are MQTT v5 only (version is '3.1.1')")
        try:
            info = self.client.publish(topic, payload, qos, retain, properties)
        except ValueError as exc:
            raise MqttError(f"cannot publish to {topic!r}: {exc}") from exc
        if info.rc != SUCCESS:
            raise MqttDisconnected(f"publish failed: {mqtt.error_string(info.rc)}")
        fut: asyncio.Future[int] = self.loop.create_future()
        if qos == 0:
            fut.set_result(0)
        else:
            self.inflight[info.mid] = fut
        return fut

    def subscribe(self, topics: list[tuple[str, Any]]) -> asyncio.Future[list[ReasonCode]]:
        """Send one SUBSCRIBE (paho's list form); the future resolves to the SUBACK codes."""
        rc, mid = self.client.subscribe(topics)
        if rc != SUCCESS or mid is None:
            raise MqttDisconnected(f"subscribe failed: {mqtt.error_string(rc)}")
        return self._suback(mid)

    def unsubscribe(self, topic: str) -> asyncio.Future[list[ReasonCode]]:
        rc, mid = self.client.unsubscribe(topic)
        if rc != SUCCESS or mid is None:
            raise MqttDisconnected(f"unsubscribe failed: {mqtt.error_string(rc)}")
        return self._suback(mid)

    def _suback(self, mid: int) -> asyncio.Future[list[ReasonCode]]:
        fut: asyncio.Future[list[ReasonCode]] = self.loop.create_future()
        self.subacks[mid] = fut
        return fut

    # -- acks -----------------------------------------------------------------------------
    def release_acks(self) -> bool:
        """Send the PUBACKs of the acknowledged prefix of the ledger (receive order)."""
        if self.lost.done():
            return False
        ledger, client = self.ledger, self.client
        while ledger and ledger[0]._acked:
            m = ledger.popleft()
            client.ack(m.mid, m.qos)
        return True

    # -- the end --------------------------------------------------------------------------
    def kill(self, reason: str) -> None:
        """Lose the connection abruptly (no DISCONNECT: the broker publishes the will)."""
        if self.lost.done():
            return
        self._detach()
        if self.ahead is not None:
            self.ahead.clear()  # paho is to see the end of the stream, not what was read
        sock = self.client.socket()
        if isinstance(sock, socket.socket):  # ssl.SSLSocket is one too
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            # paho sees EOF, closes the socket itself and reports the loss.
            self.client.loop_read()
        self._set_lost(reason)

    def fail_pending(self, error: MqttDisconnected) -> None:
        self._detach()
        for fut in self.inflight.values():
            if not fut.done():
                fut.set_exception(error)
        for sub in self.subacks.values():
            if not sub.done():
                sub.set_exception(error)
        self.inflight.clear()
        self.subacks.clear()
        self.ledger.clear()


def _take_publish(client: mqtt.Client, handler: Callable[[], MQTTErrorCode]) -> Any:
    """Put ``handler`` in place of paho's PUBLISH decoding (``Client._handle_publish``, which
    paho 2.x calls for every received PUBLISH, reading ``_in_packet``), for this client
    only; return paho's own, which the handler falls back to. A paho without those keeps
    its own decoding, and the handler is not used."""
    original = getattr(client, "_handle_publish", None)
    if original is None or not isinstance(getattr(client, "_in_packet", None), dict):
        return None
    # An instance attribute shadows the method for this client only.
    client._handle_publish = handler  # type: ignore[method-assign]
    return original


def _read_ahead(client: mqtt.Client) -> ReadAhead | None:
    """Put a :class:`ReadAhead` in front of paho's socket reads (``Client._sock_recv``, the
    one method paho 2.x reads its socket with); ``None`` on a paho without it."""
    recv = getattr(client, "_sock_recv", None)
    if recv is None:
        return None
    ahead = ReadAhead(recv)
    # An instance attribute shadows the method for this client only.
    client._sock_recv = ahead.recv  # type: ignore[method-assign]
    return ahead
