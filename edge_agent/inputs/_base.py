"""The input interface: what a plugin is given (a :class:`Sink`) and what it provides.

::

    class Input:
        name: str
        state: str                      # "starting" | "up" | "down" | "retrying"
        async def run(self, sink: Sink) -> None

An input is built from its typed config by its registered factory (``factory(cfg,
gateway=...)``) and runs as one task in the agent's input task group until cancelled. It hands
readings to ``sink.submit(readings, ack)``; ``ack`` (if given) is called once those readings
are safely in the spool, which lets an input with acknowledgements (local MQTT QoS 1, manual
ack) keep the guarantee end to end across a crash of the agent. What it cannot turn into a
reading it counts with ``sink.count_drop(stage, channel)`` (health and ``/metrics`` show it).
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

    @abstractmethod
    async def run(self, sink: Sink) -> None:
        """Produce readings into ``sink`` until cancelled."""


class InputFactory(Protocol):
    """Builds an input from its config (an input class is one)."""

    def __call__(self, cfg: Any, /, *, gateway: str) -> Input: ...
