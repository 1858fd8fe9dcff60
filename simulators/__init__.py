"""Simulated sensors and gateways, so everything can be tested without hardware.

- :class:`GatewayFleet`: whole gateways publishing onto a broker with the wire contract,
  with a :class:`Ledger` of what was emitted;
- ``simulators.devices``: reference devices (firmware protocol, NMEA, Modbus TCP).
"""

from simulators._fleet import FleetConfig, GatewayFleet, Ledger

__all__ = ["FleetConfig", "GatewayFleet", "Ledger"]
