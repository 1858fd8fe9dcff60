"""Storage: what the API reads from InfluxDB and keeps in its operator database.

The InfluxDB v1 client, every InfluxQL statement of the API (built from validated values
only, in one module), the bounded history answers, and the operator database (API keys,
alert rules, acknowledgements, alert history, the audit trail, gateway enrolments; SQLAlchemy).
"""

from api.storage._audit import AuditEntry, AuditLog
from api.storage._db import (
    KEY_PREFIX,
    AlertAck,
    AlertEvent,
    AlertRule,
    ApiKey,
    Database,
    Enrolment,
    hash_key,
    new_key,
)
from api.storage._history import HistoryOut, Point, read_series
from api.storage._influx import InfluxClient, Series, influx_verify
from api.storage._queries import (
    FieldCondition,
    FieldFilter,
    ObservationQuery,
    SeriesQuery,
    quote_ident,
    quote_string,
    select_completeness,
    select_entity_history,
    select_latest,
    select_present_seqs,
    select_previous_max_seq,
    show_measurements,
)
from api.storage._replay import ReplayFrames, ReplayLink, ReplayVehicle, read_replay
from api.storage._replicas import ReplicaHealth

__all__ = [
    "KEY_PREFIX",
    "AlertAck",
    "AlertEvent",
    "AlertRule",
    "ApiKey",
    "AuditEntry",
    "AuditLog",
    "Database",
    "Enrolment",
    "FieldCondition",
    "FieldFilter",
    "HistoryOut",
    "InfluxClient",
    "ObservationQuery",
    "Point",
    "ReplayFrames",
    "ReplayLink",
    "ReplayVehicle",
    "ReplicaHealth",
    "Series",
    "SeriesQuery",
    "hash_key",
    "influx_verify",
    "new_key",
    "quote_ident",
    "quote_string",
    "read_replay",
    "read_series",
    "select_completeness",
    "select_entity_history",
    "select_latest",
    "select_present_seqs",
    "select_previous_max_seq",
    "show_measurements",
]
