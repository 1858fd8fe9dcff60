"""Where a session connects next and how long it waits first.

::

    addresses  n1 ─▶ n2 ─▶ n3 ─▶ n1 ...   (``SessionConfig.hosts``; one address by default)
    connect failed     next address at once; after a whole round failed: Backoff.delay(attempt)
    connection lost    the node may be gone: the next address first, a new round starts there,
                       after Backoff.delay(0)

Each decision is logged with the URL it left and the one it tries next; a failed connect
with ``errno`` (its symbolic name, ``ECONNREFUSED``) or the CONNACK ``reason_code``. The
caller (the session's connection task) does the connecting and the waiting.
"""

from __future__ import annotations

import errno as errno_codes
import logging

from foundation.mqtt._config import SessionConfig
from foundation.mqtt._errors import MqttError

__all__ = ["Failover"]

log = logging.getLogger("foundation.mqtt")


class Failover:
    """The broker addresses of one session, taken in turn, and the backoff between rounds."""

    __slots__ = ("_attempt", "_config", "_failed_url", "_index", "_round_start")

    def __init__(self, config: SessionConfig) -> None:
        self._config = config
        #: Index into ``config.addresses``: where the session connects (or is connected).
        self._index = 0
        self._round_start = 0
        self._attempt = 0
        self._failed_url = ""

    @property
    def address(self) -> tuple[str, int]:
        return self._config.addresses[self._index]

    @property
    def url(self) -> str:
        return self._config.url_of(*self.address)

    def start(self) -> None:
        """A new run of the connection task: a round starts at the current address."""
        self._round_start = self._index
        self._attempt = 0

    def connected(self) -> None:
        """A connect succeeded: the next failure starts the backoff from its beginning."""
        self._attempt = 0

    def _advance(self) -> bool:
        """Move on to the next address; True when that starts a new round over the list."""
        self._index = (self._index + 1) % len(self._config.addresses)
        return self._index == self._round_start

    def connect_failed(self, exc: MqttError) -> bool:
        """Move on after a failed connect. False: try the next address at once (logged);
        True: a whole round failed (then :meth:`retry_delay`, or give up)."""
        self._failed_url = self.url
        if self._advance():
            return True
        log.warning(
            "MQTT connect failed; trying the next broker address",
            extra={
                "session": self._config.label,
                "url": self._failed_url,
                "error": str(exc),
                "next": self.url,
            },
        )
        return False

    def retry_delay(self, exc: MqttError) -> float:
        """How long to wait after a whole round failed (the backoff grows; logged)."""
        delay = self._config.backoff.delay(self._attempt)
        self._attempt += 1
        code = getattr(exc, "errno", None)
        log.warning(
            "MQTT connect failed; retrying",
            extra={
                "session": self._config.label,
                "url": self._failed_url,
                "error": str(exc),
                # the symbolic name (ECONNREFUSED), for whoever reads the log
                "errno": None if code is None else errno_codes.errorcode.get(code),
                "reason_code": getattr(exc, "reason_code", None),
                "retry_in_s": delay,
            },
        )
        return delay

    def lost(self, reason: str) -> float:
        """Move on after a lost connection (logged); how long to wait before reconnecting."""
        lost_url = self.url
        if len(self._config.addresses) > 1:
            # The node may be gone: the next one first; a new round starts there.
            self._advance()
            self._round_start = self._index
        log.warning(
            "MQTT connection lost; reconnecting",
            extra={
                "session": self._config.label,
                "url": lost_url,
                "reason": reason,
                "next": self.url,
            },
        )
        return self._config.backoff.delay(0)
