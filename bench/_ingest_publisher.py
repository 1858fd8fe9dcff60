"""The ingest benchmark's MQTT side: the raw QoS 1 publisher and the session purge.

Imported by bench/ingest.py (run as a script, its directory is on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

__all__ = ["Publisher", "purge_session"]


def _varint(n: int) -> bytes:
    """MQTT's variable byte integer (remaining length, property length)."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


class Publisher:
    """QoS 1 publisher (MQTT 5) that keeps up to ``window`` messages in flight.

    It stands for the gateways, which run on other machines in production, yet here it shares
    the two cores with the system under test (the direct-write phase has no such guest). So
    it writes PUBLISH packets on a plain socket, up to 64 per ``sendall``, and a reader
    thread counts the PUBACKs: ~3 us of CPU per message, where paho took ~70 us (0.7 us per
    reading of 100-reading messages, a twentieth of the whole system's CPU per reading).
    (paho with ``max_inflight_messages`` set was quadratic besides: it rescans its outgoing
    dict on every PUBACK.)
    """

    def __init__(self, port: int, *, window: int = 500) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port))
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client_id = f"bench-pub-{os.getpid()}".encode()
        # CONNECT v5: clean start, keep alive 600 s, no properties, the client id.
        body = (
            b"\x00\x04MQTT\x05\x02"
            + (600).to_bytes(2, "big")
            + b"\x00"
            + len(client_id).to_bytes(2, "big")
            + client_id
        )
        self._sock.sendall(b"\x10" + _varint(len(body)) + body)
        self._buffer = b""
        kind, ack = self._packet()
        if kind != 0x20 or ack[1] != 0:
            raise RuntimeError(f"CONNACK refused: {ack!r}")
        self._window = threading.Semaphore(window)
        self.acked = 0
        self.expected = 0
        self.done = threading.Event()
        self._reader = threading.Thread(target=self._read_acks, daemon=True)
        self._reader.start()

    def _packet(self) -> tuple[int, bytes]:
        """The next packet from the broker: (type nibble << 4, variable header + payload)."""
        while True:
            buf = self._buffer
            length, shift, i = 0, 0, 1
            while i < len(buf):
                length |= (buf[i] & 0x7F) << shift
                shift += 7
                i += 1
                if not buf[i - 1] & 0x80:
                    if len(buf) >= i + length:
                        self._buffer = buf[i + length :]
                        return buf[0] & 0xF0, buf[i : i + length]
                    break
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionError("broker closed the connection")
            self._buffer += chunk

    def _read_acks(self) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while True:
                kind, _ = self._packet()
                if kind == 0x40:  # PUBACK
                    self._window.release()
                    self.acked += 1
                    if self.acked >= self.expected:
                        self.done.set()

    def publish_all(self, messages: list[tuple[str, bytes]]) -> float:
        """Publish everything (returns when the last is sent); return the start."""
        self.acked = 0
        self.expected = len(messages)
        self.done.clear()
        start = time.monotonic()
        acquire, send = self._window.acquire, self._sock.sendall
        pending: list[bytes] = []
        for n, (topic, payload) in enumerate(messages):
            if not acquire(blocking=False):
                if pending:
                    send(b"".join(pending))
                    pending.clear()
                acquire()
            name = topic.encode()
            header = (
                len(name).to_bytes(2, "big") + name + (n % 65535 + 1).to_bytes(2, "big") + b"\x00"
            )
            pending.append(b"\x32" + _varint(len(header) + len(payload)) + header + payload)
            if len(pending) >= 64:
                send(b"".join(pending))
                pending.clear()
        if pending:
            send(b"".join(pending))
        return start

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.sendall(b"\xe0\x00")  # DISCONNECT
        self._sock.close()
        self._reader.join(5)


def purge_session(port: int, client_id: str) -> None:
    """Delete a stopped worker's persistent session, so its share group goes with it.

    Otherwise every later phase's messages are also queued for the dead session (memory and
    broker work that the next phase would pay for).
    """
    connected = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.on_connect = lambda *_a: connected.set()
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 0
    client.connect("127.0.0.1", port, clean_start=True, properties=props)
    client.loop_start()
    connected.wait(10)
    client.disconnect()
    client.loop_stop()
