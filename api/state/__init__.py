"""State: what the API holds in memory, and the background work that keeps it current.

The broker link (a ``foundation.mqtt`` session in the event loop), the live state and inventory
it feeds, the live-push hub, the alert engine and its history, transport views of the live
state, and gap repair (missing batches asked of their gateways again).
"""

from api.state._alerts import Alert, AlertEngine, AlertHistory, AlertTransition, Rule
from api.state._areas import AreaMap
from api.state._broker import BrokerLink, prepare_broker
from api.state._commands import ClockCheck, CommandAnswer, CommandTimeout, GatewayCommands
from api.state._config_pushes import ConfigPushes
from api.state._gtfs_feed import GtfsFeed, GtfsFeedError, TripSchedule, load_gtfs
from api.state._hub import (
    EXTRA_KINDS,
    KINDS,
    MEASUREMENT_KIND,
    Event,
    Hub,
    StreamFilter,
    Subscriber,
    parse_filter,
)
from api.state._intake import LiveIntake
from api.state._live import (
    Completeness,
    DeviceState,
    GatewayState,
    Inventory,
    Latest,
    LiveState,
    completeness_of,
    series_key,
)
from api.state._repair import GapRepair, RepairRound, seq_ranges
from api.state._schedule import Adherence, Schedule, ScheduleCollector, VehicleAdherence
from api.state._transport import (
    Congestion,
    GeoPoint,
    VehicleOut,
    as_float,
    as_int,
    as_str,
    congestion_level,
    vehicles,
)

__all__ = [
    "EXTRA_KINDS",
    "KINDS",
    "MEASUREMENT_KIND",
    "Adherence",
    "Alert",
    "AlertEngine",
    "AlertHistory",
    "AlertTransition",
    "AreaMap",
    "BrokerLink",
    "ClockCheck",
    "CommandAnswer",
    "CommandTimeout",
    "Completeness",
    "ConfigPushes",
    "Congestion",
    "DeviceState",
    "Event",
    "GapRepair",
    "GatewayCommands",
    "GatewayState",
    "GeoPoint",
    "GtfsFeed",
    "GtfsFeedError",
    "Hub",
    "Inventory",
    "Latest",
    "LiveIntake",
    "LiveState",
    "RepairRound",
    "Rule",
    "Schedule",
    "ScheduleCollector",
    "StreamFilter",
    "Subscriber",
    "TripSchedule",
    "VehicleAdherence",
    "VehicleOut",
    "as_float",
    "as_int",
    "as_str",
    "completeness_of",
    "congestion_level",
    "load_gtfs",
    "parse_filter",
    "prepare_broker",
    "seq_ranges",
    "series_key",
    "vehicles",
]
