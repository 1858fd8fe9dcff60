"""Read-ahead for paho's packet reader: one system call per readable socket, not three per
packet.

::

    paho _packet_read, per packet          with ReadAhead (Connection.attach installs it)
    ───────────────────────────────        ─────────────────────────────────────────────
    recv(1)    fixed header byte     ─┐    recv(64 KiB) once ─▶ buffer ─▶ the same recv(1),
    recv(1)    remaining length, ×1-4 ├─▶                         recv(1), recv(n) served
    recv(n)    variable header + body ┘                           from memory

paho reads every packet with at least three ``recv()`` calls on the socket, each a system
call (a 4-byte PUBACK costs three). :class:`ReadAhead` stands in for the client's
``_sock_recv(bufsize)``, the one place paho 2.x reads its socket: it fills a buffer with one
call of the original (which keeps paho's TLS and error translation: ``BlockingIOError`` when
nothing is there, ``b""`` at EOF) and hands out what paho asks for. Bytes waiting in the
buffer are invisible to the event loop's ``epoll``, so the connection asks :attr:`pending`
before it stops reading (``Connection.on_readable`` and ``resume``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

__all__ = ["READ_AHEAD_BYTES", "ReadAhead"]

#: One read takes what the socket holds, up to this much.
READ_AHEAD_BYTES: Final = 65536


class ReadAhead:
    """A read buffer in front of ``recv``: :meth:`recv` returns at most ``bufsize`` bytes,
    from the buffer, or from one ``recv(READ_AHEAD_BYTES)`` when the buffer is empty (its
    exceptions and its ``b""`` at EOF pass through)."""

    __slots__ = ("_buf", "_pos", "_recv")

    def __init__(self, recv: Callable[[int], bytes]) -> None:
        self._recv = recv
        self._buf = b""
        self._pos = 0

    @property
    def pending(self) -> int:
        """Bytes read from the socket that paho has not taken yet."""
        return len(self._buf) - self._pos

    def recv(self, bufsize: int) -> bytes:
        buf, pos = self._buf, self._pos
        if pos >= len(buf):
            buf = self._recv(READ_AHEAD_BYTES)
            if len(buf) <= bufsize:  # all of it (or EOF): nothing to keep
                self._buf, self._pos = b"", 0
                return buf
            self._buf, pos = buf, 0
        end = pos + bufsize
        if end >= len(buf):
            self._buf, self._pos = b"", 0
            return buf[pos:] if pos else buf
        self._pos = end
        return buf[pos:end]

    def clear(self) -> None:
        """Forget what is buffered (the connection is being closed)."""
        self._buf, self._pos = b"", 0
