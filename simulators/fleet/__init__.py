"""Whole simulated gateways publishing the wire contract straight onto a broker.

:class:`GatewayFleet` runs the gateways of a scenario in one process, each with its own MQTT
session, spool, seq, birth and will, sending by the edge agent's rules
(:class:`foundation.SendPolicy`); :class:`FleetConfig` says where and how, :class:`FleetStats`
what it counted. Inside, one job per module:

- ``_config.py``: :class:`FleetConfig`, :class:`BrokerUrl`, :class:`FleetStats`;
- ``_gateway.py``: one gateway's state, and the delivered batches kept for ``resend``;
- ``_sending.py``: spool into the in-flight window, PUBACK handling, ``resend``;
- ``_uplink.py``: each gateway's connection (birth, will, faults cutting it, death);
- ``_commands.py``: ping, reannounce, health and resend answered as the edge agent does;
- ``_births.py``: what a gateway announces (birth, health report);
- ``_fleet.py``: :class:`GatewayFleet`, the run loop (step the city, spool, publish).
"""

from __future__ import annotations

from simulators.fleet._config import BrokerUrl, FleetConfig, FleetStats
from simulators.fleet._fleet import GatewayFleet

__all__ = ["BrokerUrl", "FleetConfig", "FleetStats", "GatewayFleet"]
