"""Errors of the simulators package.

::

    SimulatorError                      base of everything the simulators raise
    ├── ScenarioError                   a scenario file or model is invalid (file, key, reason)
    ├── BrokerError                     the broker refused or could not be reached
    ├── DeviceModeError                 a simulated device could not be started
    └── LedgerError                     a ledger could not be compared with the store
"""

from __future__ import annotations

__all__ = ["BrokerError", "DeviceModeError", "LedgerError", "ScenarioError", "SimulatorError"]


class SimulatorError(Exception):
    """Base of every error raised by :mod:`simulators`."""


class ScenarioError(SimulatorError):
    """A scenario is invalid; ``source`` names the file, ``key`` the place, ``reason`` why."""

    def __init__(self, reason: str, *, source: str = "<scenario>", key: str = "") -> None:
        self.reason = reason
        self.source = source
        self.key = key
        where = f"{source}: {key}: " if key else f"{source}: "
        super().__init__(f"{where}{reason}")


class BrokerError(SimulatorError):
    """The broker could not be reached or refused the fleet (``url``, ``reason``)."""

    def __init__(self, reason: str, *, url: str = "") -> None:
        self.reason = reason
        self.url = url
        super().__init__(f"{url}: {reason}" if url else reason)


class DeviceModeError(SimulatorError):
    """A simulated device (pty, Modbus TCP server, local MQTT sensor) failed to start."""


class LedgerError(SimulatorError):
    """Comparing a ledger with what the database holds failed (query error, bad answer)."""
