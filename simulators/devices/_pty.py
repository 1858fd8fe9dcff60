"""The device end of a pseudo-terminal, reachable through a stable symlink.

A gateway opens ``link_path`` (like ``/dev/serial/by-id/...`` on real hardware); the
device holds the master side. :meth:`PtyPort.unplug` closes the master and removes the
link, which is what the gateway sees when a USB adapter is pulled; :meth:`PtyPort.plug`
creates a fresh pty and points the link at it.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
import tty
from pathlib import Path

__all__ = ["PtyPort"]


class PtyPort:
    """A pty master with a symlinked slave path; writes are paced like a UART."""

    def __init__(self, link_path: str | os.PathLike[str], *, baudrate: int = 115200) -> None:
        self.link_path = Path(link_path)
        self.baudrate = baudrate
        self._master: int | None = None
        self._slave: int | None = None
        self._lock = threading.Lock()

    @property
    def plugged(self) -> bool:
        return self._master is not None

    def plug(self) -> None:
        """Create a new pty and point ``link_path`` at its slave side."""
        with self._lock:
            if self._master is not None:
                return
            master, slave = os.openpty()
            # Raw mode before anyone writes: no echo, no CR/LF translation, no line buffering.
            tty.setraw(slave)
            os.set_blocking(master, False)
            tmp = self.link_path.with_name(self.link_path.name + ".tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(os.ttyname(slave))
            tmp.replace(self.link_path)
            # Keeping our own slave fd open means reads on the master never see EIO while
            # the gateway is away, and the termios settings persist.
            self._master, self._slave = master, slave

    def unplug(self) -> None:
        """Close the pty (the gateway's reads fail with EIO) and remove the link."""
        with self._lock:
            with contextlib.suppress(FileNotFoundError):
                self.link_path.unlink()
            for fd in (self._master, self._slave):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._master = self._slave = None

    close = unplug

    def write(self, data: bytes, *, paced: bool = True) -> bool:
        """Write ``data`` at the line rate; False if unplugged (the bytes are lost)."""
        per_byte = 10.0 / self.baudrate if paced else 0.0
        view = memoryview(data)
        while view:
            with self._lock:
                fd = self._master
                if fd is None:
                    return False
                try:
                    n = os.write(fd, view[:256])
                except BlockingIOError:
                    n = 0
                except OSError:
                    return False
            view = view[n:]
            if n == 0:
                time.sleep(0.002)  # the gateway is not reading: the pty buffer is full
            elif per_byte:
                time.sleep(n * per_byte)
        return True

    def read(self, timeout: float) -> bytes:
        """Bytes the gateway sent, waiting at most ``timeout`` seconds; b"" if none."""
        fd = self._master
        if fd is None:
            time.sleep(timeout)
            return b""
        try:
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                return b""
            with self._lock:
                if self._master != fd:
                    return b""
                return os.read(fd, 4096)
        except (BlockingIOError, InterruptedError):
            return b""
        except (OSError, ValueError):
            # Closed under us by unplug(), or EIO: treat as nothing received.
            return b""
