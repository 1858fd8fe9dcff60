"""Simulated city, devices and gateways, so everything can be tested without hardware.

- :class:`Scenario` (YAML via :func:`load_scenario`), :class:`FaultSpec`: what to simulate;
- :class:`City`: the numpy city model (roads, loops, buses, parking, air, noise, water,
  energy), stepped on a simulated clock; :class:`FaultPlan` makes its sensors misbehave;
  :class:`Timetable`: the buses' timetable and recorded delays, :func:`export_gtfs` /
  :func:`write_gtfs` its GTFS zip;
- :class:`GatewayFleet` / :class:`FleetConfig`: whole gateways publishing the wire contract
  (spool, seq, birth and will) onto a broker, with a :class:`Ledger` of what was emitted and
  :func:`compare_with_influx` to check it against InfluxDB; the ``hostile`` fault makes a
  gateway misbehave on purpose (:data:`HOSTILE_CASES`, tallied in a :class:`HostileTally`);
- :class:`DeviceCity`: the city as devices (ptys with the firmware protocol and NMEA, Modbus
  TCP meters, local MQTT sensors) for real edge agents;
- ``simulators.devices``: the reference devices themselves.

Errors: :class:`SimulatorError` and its subclasses (hierarchy in ``simulators._errors``).
``docs/simulators.md`` is the guide.
"""

from simulators._areas import areas_geojson, export_areas
from simulators._city import City, Frame, KindFrame
from simulators._devicemode import DeviceCity, DeviceEndpoints
from simulators._errors import (
    BrokerError,
    DeviceModeError,
    LedgerError,
    ScenarioError,
    SimulatorError,
)
from simulators._faults import ActiveFault, FaultPlan
from simulators._gtfs import export_gtfs
from simulators._hostile import HOSTILE_CASES, HostileCase, HostileTally, hostile_messages
from simulators._kinds import KIND_SPECS
from simulators._layout import Layout, build_layout
from simulators._ledger import (
    GatewayCheck,
    GatewayRecord,
    InfluxHttp,
    InfluxQuerier,
    Ledger,
    LedgerReport,
    compare_with_influx,
)
from simulators._scenario import (
    DEVICE_KINDS,
    FAULT_TYPES,
    CityGrid,
    CitySpec,
    DeviceModeSpec,
    FaultSpec,
    GatewayProfile,
    PublishSpec,
    Scenario,
    TimetableSpec,
    load_scenario,
    packaged_scenarios,
    scenario_from_dict,
)
from simulators._timetable import (
    GTFS_FILES,
    BusState,
    Timetable,
    TripRef,
    write_delays,
    write_gtfs,
)
from simulators._wire import GatewayBatch, WireEncoder, batch_payload
from simulators.fleet import BrokerUrl, FleetConfig, FleetStats, GatewayFleet

__all__ = [
    "DEVICE_KINDS",
    "FAULT_TYPES",
    "GTFS_FILES",
    "HOSTILE_CASES",
    "KIND_SPECS",
    "ActiveFault",
    "BrokerError",
    "BrokerUrl",
    "BusState",
    "City",
    "CityGrid",
    "CitySpec",
    "DeviceCity",
    "DeviceEndpoints",
    "DeviceModeError",
    "DeviceModeSpec",
    "FaultPlan",
    "FaultSpec",
    "FleetConfig",
    "FleetStats",
    "Frame",
    "GatewayBatch",
    "GatewayCheck",
    "GatewayFleet",
    "GatewayProfile",
    "GatewayRecord",
    "HostileCase",
    "HostileTally",
    "InfluxHttp",
    "InfluxQuerier",
    "KindFrame",
    "Layout",
    "Ledger",
    "LedgerError",
    "LedgerReport",
    "PublishSpec",
    "Scenario",
    "ScenarioError",
    "SimulatorError",
    "Timetable",
    "TimetableSpec",
    "TripRef",
    "WireEncoder",
    "areas_geojson",
    "batch_payload",
    "build_layout",
    "compare_with_influx",
    "export_areas",
    "export_gtfs",
    "hostile_messages",
    "load_scenario",
    "packaged_scenarios",
    "scenario_from_dict",
    "write_delays",
    "write_gtfs",
]
