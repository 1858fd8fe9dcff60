"""systemd readiness and watchdog over ``$NOTIFY_SOCKET`` (sd_notify(3), no library).

::

    agent started ──▶ READY=1                         (Type=notify: `systemctl start` returns)
    agent[gw].watchdog ── every WatchdogSec/2 ──▶ WATCHDOG=1   (from the event loop itself)
    stop ──▶ STOPPING=1

The pings come from a task on the agent's event loop, so a loop that stalls (a blocking call,
a deadlock) stops pinging and systemd kills and restarts the agent after ``WatchdogSec``.
Without ``$NOTIFY_SOCKET`` (not under systemd, or ``Type=exec``) every call does nothing;
without ``$WATCHDOG_USEC`` (or with a ``$WATCHDOG_PID`` that is another process) there are no
pings. The socket is a unix datagram socket; a name starting with ``@`` is in the abstract
namespace.

Debugging the watchdog: ``SMARTCITY_EDGE_DEBUG_STALL=<after_s>:<for_s>`` makes the agent block
its own loop (``time.sleep``) once, ``after_s`` seconds after start, for ``for_s`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping
from typing import Final

__all__ = ["DEBUG_STALL_ENV", "Notifier", "debug_stall", "parse_stall"]

log: Final = logging.getLogger("edge_agent")
DEBUG_STALL_ENV: Final = "SMARTCITY_EDGE_DEBUG_STALL"


class Notifier:
    """Sends sd_notify datagrams when ``$NOTIFY_SOCKET`` is set; does nothing otherwise."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        environ = os.environ if env is None else env
        address = environ.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if address.startswith("@"):
            self._address = b"\0" + address[1:].encode()
        elif address.startswith("/"):
            self._address = address
        self.watchdog_s: float | None = None
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1e6
        self.sent = 0

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, message: str) -> bool:
        """Send one datagram (``READY=1``...); False if not under systemd or it failed."""
        if self._address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto(message.encode(), self._address)
        except OSError as exc:
            log.warning(f"sd_notify failed: {exc.strerror or exc}", extra={"notify": message})
            return False
        self.sent += 1
        return True

    async def watchdog(self) -> None:
        """Ping every half ``WatchdogSec`` until cancelled (returns at once without one)."""
        if self.watchdog_s is None or self._address is None:
            return
        interval = self.watchdog_s / 2
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(interval)


def parse_stall(value: str | None) -> tuple[float, float] | None:
    """``"after_s:for_s"`` → ``(after_s, for_s)``; None when unset or malformed."""
    if not value:
        return None
    after, _, duration = value.partition(":")
    try:
        a, d = float(after), float(duration)
    except ValueError:
        return None
    return (a, d) if a >= 0 and d > 0 else None


async def debug_stall(after_s: float, for_s: float) -> None:
    """Block the event loop once (debugging the watchdog; see the module docstring)."""
    await asyncio.sleep(after_s)
    log.warning("debug: blocking the event loop", extra={"stall_s": for_s})
    time.sleep(for_s)  # noqa: ASYNC251 - blocking the loop is the point
