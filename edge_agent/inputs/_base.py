"""The input interface: what a plugin is given (a :class:`Sink`) and what it provides.

::

    class Input:
        name: str
        state: str                      # "starting" | "up" | "down" | "retrying" ...
        last_error: str | None          # shown by `edge status`
        clock_offset_s: float | None    # device clock - gateway clock (device-stamped inputs)
        def counters(self) -> dict[str, int]        # link counters (metrics, status)
        def drop_counters(self) -> dict[str, int]   # discards among them (health ``dropped``)
        async def run(self, sink: Sink) -> None

An input is built from its typed config by its registered factory (``factory(cfg,
gateway=...)``) and runs as one task in the agent's input task group until cancelled; the
agent supervises each input on its own (a task that fails is counted and restarted with
backoff, the other inputs carry on). It hands readings to ``sink.submit(readings, ack)``;
``ack`` (if given) is called once those readings are safely in the spool, which lets an input
with acknowledgements (local MQTT QoS 1, manual ack) keep the guarantee end to end across a
crash of the agent. A message it cannot turn into a reading it reports with
``sink.count_reject(input, reason, where)`` (stage ``input_parse``: health and ``/metrics``
show it), acknowledges, and carries on: one message never stops an input.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Protocol

from telemetry import Reading

__all__ = ["Input", "InputConfig", "InputFactory", "Sink"]


class Sink(Protocol):
    def submit(self, readings: list[Reading], ack: Callable[[], None] | None) -> None: ...

    def count_drop(self, stage: str, channel: str, n: int = 1) -> None: ...

    def count_reject(self, input_name: str, reason: str, where: str) -> None:
        """One message of ``input_name`` (from ``where``: a topic) could not become a
        reading, for ``reason`` (a short code: a metric label)."""
        ...


class InputConfig(Protocol):
    """What the agent reads of every input's config model (each has more of its own)."""

    @property
    def type(self) -> str: ...

    @property
    def name(self) -> str: ...


class Input(ABC):
    """Base of input plugins."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.state = "starting"
        #: The latest error of the input's link or task (``edge status``), kept after recovery.
        self.last_error: str | None = None
        #: The device clock minus the gateway clock at receipt, in seconds, for the latest
        #: device-stamped reading (includes the transmission delay); None: no device clock.
        self.clock_offset_s: float | None = None

    def error(self) -> str | None:
        """The latest error (of the link, or of the task: :attr:`last_error`)."""
        return self.last_error

    def counters(self) -> dict[str, int]:
        """The input's link counters (firmware_bridge's, the local MQTT session's), cumulative
        over its restarts; empty for inputs without any."""
        return {}

    def drop_counters(self) -> dict[str, int]:
        """The subset of :meth:`counters` that counts discarded input (health ``dropped``)."""
        return {}

    @abstractmethod
    async def run(self, sink: Sink) -> None:
        """Produce readings into ``sink`` until cancelled.

        Reusable: after a failure the agent calls it again on the same object.
        """


class InputFactory(Protocol):
    """Builds an input from its config (an input class is one)."""

    def __call__(self, cfg: Any, /, *, gateway: str) -> Input: ...
