"""The wire contract between gateways and the platform. No I/O, no server dependencies.

- :class:`Reading`, :class:`Batch`: what gateways send (``docs/wire-protocol.md``);
- :func:`encode_batch`, :func:`decode_batch`, :func:`decode_batch_partial`: the JSON codec;
- :class:`Topics`: the versioned MQTT topic namespace;
- :class:`Birth`, :class:`Death`, :class:`Health`, config and command messages;
- :class:`LineProtocolEncoder`: readings to InfluxDB line protocol;
- :class:`Intake`: conformance and line protocol in one pass (ingest's hot path);
- :data:`MEASUREMENTS`: the Smart Data Models vocabulary the platform knows;
- :class:`Conformer`: a decoded reading made fit for storage (vocabulary types, reserved
  measurements, clock skew, control characters) or refused with a reason;
- :func:`parse_resend_args`, :func:`resend_result`: the ``resend`` command's arguments and
  answer, the same for every gateway;
- :func:`bookkeeping_line`, :func:`completeness_query`: the per-batch bookkeeping points that
  ingest writes and the API and the chaos run read.
- :func:`service_day_anchor`, :func:`parse_gtfs_time`, :func:`format_gtfs_time`: GTFS
  Schedule times, as the simulator writes feeds and the API reads them.
"""

from telemetry._bookkeeping import (
    BOOKKEEPING_MEASUREMENT,
    DEADLETTER_MEASUREMENT,
    PLATFORM_MEASUREMENT_PREFIX,
    bookkeeping_line,
    bookkeeping_ts,
    completeness_query,
)
from telemetry._codec import (
    DecodedBatch,
    RejectedReading,
    decode_batch,
    decode_batch_partial,
    encode_batch,
)
from telemetry._commands import (
    MAX_RESEND_SEQS,
    InvalidCommand,
    ReplyAddress,
    parse_resend_args,
    reply_address,
    resend_result,
)
from telemetry._conformance import (
    DEFAULT_MAX_CLOCK_SKEW_S,
    DEFAULT_MAX_SERIES_PER_GATEWAY,
    Conformer,
    Nonconformity,
    NonconformityReason,
)
from telemetry._errors import (
    InvalidPayload,
    MalformedPayload,
    PayloadError,
    PayloadTooLarge,
    TelemetryError,
    TopicError,
    UnsupportedVersion,
)
from telemetry._gtfs import format_gtfs_time, parse_gtfs_time, service_day_anchor
from telemetry._intake import Intake, IntakeResult
from telemetry._lineprotocol import (
    LineProtocolEncoder,
    escape_measurement,
    escape_string_field,
    escape_tag,
)
from telemetry._messages import (
    Birth,
    CommandRequest,
    CommandResponse,
    ConfigDesired,
    ConfigReported,
    Death,
    DeviceInfo,
    Health,
    Location,
    SpoolHealth,
    UpdateReport,
    decode_message,
    decode_status,
    encode_message,
)
from telemetry._model import (
    ID_RE,
    MAX_FIELDS,
    MAX_PAYLOAD_BYTES,
    MAX_READINGS,
    MAX_STRING_LEN,
    MAX_TAG_VALUE_LEN,
    MAX_TAGS,
    NAME_RE,
    RESERVED_FIELD_NAMES,
    RESERVED_TAG_KEYS,
    SUPPORTED_VERSIONS,
    TS_MAX_NS,
    TS_MIN_NS,
    WIRE_VERSION,
    Batch,
    Clock,
    FieldValue,
    Quality,
    Reading,
)
from telemetry._subjects import (
    MQTT_STREAM,
    MQTT_STREAM_PREFIX,
    check_cluster_id,
    mqtt_to_nats_subject,
    nats_subject_to_mqtt_topic,
)
from telemetry._topics import DEFAULT_ROOT, TOPIC_VERSION, TopicKind, Topics
from telemetry._vocabulary import MEASUREMENTS, FieldSpec, MeasurementSpec, float_fields

__all__ = [
    "BOOKKEEPING_MEASUREMENT",
    "DEADLETTER_MEASUREMENT",
    "DEFAULT_MAX_CLOCK_SKEW_S",
    "DEFAULT_MAX_SERIES_PER_GATEWAY",
    "DEFAULT_ROOT",
    "ID_RE",
    "MAX_FIELDS",
    "MAX_PAYLOAD_BYTES",
    "MAX_READINGS",
    "MAX_RESEND_SEQS",
    "MAX_STRING_LEN",
    "MAX_TAGS",
    "MAX_TAG_VALUE_LEN",
    "MEASUREMENTS",
    "MQTT_STREAM",
    "MQTT_STREAM_PREFIX",
    "NAME_RE",
    "PLATFORM_MEASUREMENT_PREFIX",
    "RESERVED_FIELD_NAMES",
    "RESERVED_TAG_KEYS",
    "SUPPORTED_VERSIONS",
    "TOPIC_VERSION",
    "TS_MAX_NS",
    "TS_MIN_NS",
    "WIRE_VERSION",
    "Batch",
    "Birth",
    "Clock",
    "CommandRequest",
    "CommandResponse",
    "ConfigDesired",
    "ConfigReported",
    "Conformer",
    "Death",
    "DecodedBatch",
    "DeviceInfo",
    "FieldSpec",
    "FieldValue",
    "Health",
    "Intake",
    "IntakeResult",
    "InvalidCommand",
    "InvalidPayload",
    "LineProtocolEncoder",
    "Location",
    "MalformedPayload",
    "MeasurementSpec",
    "Nonconformity",
    "NonconformityReason",
    "PayloadError",
    "PayloadTooLarge",
    "Quality",
    "Reading",
    "RejectedReading",
    "ReplyAddress",
    "SpoolHealth",
    "TelemetryError",
    "TopicError",
    "TopicKind",
    "Topics",
    "UnsupportedVersion",
    "UpdateReport",
    "bookkeeping_line",
    "bookkeeping_ts",
    "check_cluster_id",
    "completeness_query",
    "decode_batch",
    "decode_batch_partial",
    "decode_message",
    "decode_status",
    "encode_batch",
    "encode_message",
    "escape_measurement",
    "escape_string_field",
    "escape_tag",
    "float_fields",
    "format_gtfs_time",
    "mqtt_to_nats_subject",
    "nats_subject_to_mqtt_topic",
    "parse_gtfs_time",
    "parse_resend_args",
    "reply_address",
    "resend_result",
    "service_day_anchor",
]
