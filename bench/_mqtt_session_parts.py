"""What both shapes of bench/mqtt_session.py share: the measuring window, the reference
driver (raw paho in the event loop), CONNECT properties, cProfile per variant.

Imported by bench/mqtt_session.py (run as a script, its directory is on ``sys.path``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

__all__ = ["Args", "Measured", "PahoInLoop", "Window", "connect_props", "profiled"]

Args = argparse.Namespace


@dataclass(frozen=True, slots=True)
class Measured:
    """Messages over a window of wall time, with the process's CPU time in that window."""

    messages: int
    seconds: float
    cpu_s: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / max(self.messages, 1) * 1e6


class Window:
    """Starts a measuring window (wall and process CPU time); :meth:`stop` closes it."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.cpu0 = time.process_time()

    def stop(self, messages: int) -> Measured:
        return Measured(messages, time.perf_counter() - self.t0, time.process_time() - self.cpu0)


# -- raw paho in the event loop: the reference driver ------------------------------------------
class PahoInLoop:
    """The smallest correct way to drive paho from asyncio (what aiomqtt does, minus its
    thread hand-off): one loop_read per readable event, loop_write while paho has bytes."""

    def __init__(self, client: mqtt.Client) -> None:
        self.client = client
        self.loop = asyncio.get_running_loop()
        self.connected: asyncio.Future[None] = self.loop.create_future()
        self.fd = -1
        self.misc: asyncio.TimerHandle | None = None
        client.on_connect = self._on_connect

    def _on_connect(self, *_a: Any) -> None:
        if not self.connected.done():
            self.connected.set_result(None)

    async def connect(self, port: int, **kw: Any) -> None:
        c = self.client
        await self.loop.run_in_executor(None, lambda: c.connect("127.0.0.1", port, 60, **kw))
        sock = c.socket()
        assert sock is not None
        self.fd = sock.fileno()
        c.on_socket_register_write = lambda *_: self._want_write()
        c.on_socket_unregister_write = lambda *_: self._no_write()
        c.on_socket_close = lambda *_: self._close()
        self.loop.add_reader(self.fd, c.loop_read)
        if c.want_write():
            self.loop.add_writer(self.fd, c.loop_write)
        self.misc = self.loop.call_later(1, self._misc)
        await self.connected

    def _want_write(self) -> None:
        self.loop.add_writer(self.fd, self.client.loop_write)

    def _no_write(self) -> None:
        self.loop.remove_writer(self.fd)

    def _misc(self) -> None:
        self.client.loop_misc()
        self.misc = self.loop.call_later(1, self._misc)

    def _close(self) -> None:
        self.loop.remove_reader(self.fd)
        self.loop.remove_writer(self.fd)
        if self.misc is not None:
            self.misc.cancel()

    async def disconnect(self) -> None:
        self.client.disconnect()
        await asyncio.sleep(0.05)
        self._close()


def connect_props(receive_maximum: int) -> Properties:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 600
    props.ReceiveMaximum = receive_maximum
    return props


@contextlib.contextmanager
def profiled(args: Args, name: str) -> Iterator[None]:
    """Run the block under cProfile when ``--profile DIR`` is given (``DIR/<name>.prof``)."""
    if args.profile is None:
        yield
        return
    prof = cProfile.Profile()
    prof.enable()
    try:
        yield
    finally:
        prof.disable()
        prof.dump_stats(Path(args.profile) / f"{name}.prof")
