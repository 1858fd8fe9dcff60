"""The reading and the batch: what a gateway sends and what every service reads.

On the wire a batch is one JSON object with short keys (uplinks are metered cellular links)::

    {"v": 1, "gw": "cabinet-017", "seq": 4711,
     "r": [{"d": "loop-3", "m": "TrafficFlowObserved", "t": 1732780800000000000,
            "f": {"intensity": 540.0, "averageVehicleSpeed": 43.5, "occupancy": 0.21},
            "g": {"lane": "1"}, "q": "good"}]}

``docs/wire-protocol.md`` is the normative description; the limits below are its numbers.
"""

from __future__ import annotations

import re
from typing import Annotated, Final, Literal, TypeAlias

import msgspec
from msgspec import Meta

__all__ = [
    "FIELD_NAME_RE",
    "ID_RE",
    "MAX_FIELDS",
    "MAX_PAYLOAD_BYTES",
    "MAX_READINGS",
    "MAX_STRING_LEN",
    "MAX_TAGS",
    "MAX_TAG_VALUE_LEN",
    "NAME_RE",
    "RESERVED_FIELD_NAMES",
    "RESERVED_TAG_KEYS",
    "SUPPORTED_VERSIONS",
    "TEXT_RE",
    "TS_MAX_NS",
    "TS_MIN_NS",
    "WIRE_VERSION",
    "Batch",
    "Clock",
    "FieldValue",
    "Quality",
    "Reading",
]

WIRE_VERSION: Final = 1
SUPPORTED_VERSIONS: Final = (1,)

MAX_PAYLOAD_BYTES: Final = 256 * 1024
MAX_READINGS: Final = 2000
MAX_FIELDS: Final = 64
MAX_TAGS: Final = 8
MAX_TAG_VALUE_LEN: Final = 256
MAX_STRING_LEN: Final = 1024
MAX_ID_LEN: Final = 64

#: 2000-01-01T00:00:00Z and 2100-01-01T00:00:00Z in nanoseconds. A timestamp outside is a
#: device whose clock was never set (1970) or is garbage; it must not reach the database.
TS_MIN_NS: Final = 946_684_800_000_000_000
TS_MAX_NS: Final = 4_102_444_800_000_000_000

# Every pattern here is applied whole (``fullmatch``, or ``^...\Z`` where a library searches).
#: Gateway and device ids: usable as an MQTT topic level and an InfluxDB tag value as they are.
ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
#: Measurement, field and tag names: need no escaping anywhere (line protocol, InfluxQL, JSON).
NAME_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
FIELD_NAME_RE: Final = NAME_RE
#: Tag values: printable, no backslash (line protocol gives a trailing backslash no meaning).
TAG_VALUE_RE: Final = re.compile(r"[^\\\x00-\x1f\x7f]{1,256}")

#: Field names the line-protocol encoder writes itself, and InfluxDB's own ``time``.
RESERVED_FIELD_NAMES: Final = frozenset({"time", "quality", "clock"})
#: Tag keys the line-protocol encoder writes itself, and InfluxDB's own ``time``.
RESERVED_TAG_KEYS: Final = frozenset({"time", "gateway", "device"})

Quality: TypeAlias = Literal["good", "uncertain", "bad"]
Clock: TypeAlias = Literal["device", "gateway"]

_Finite = Annotated[float, Meta(ge=-1.7976931348623157e308, le=1.7976931348623157e308)]
_Int64 = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]
# Control characters other than tab are refused in string values; the pattern only runs on
# string values, which are rare, so it costs nothing on numeric readings. msgspec applies a
# pattern with ``re.search``: the end is ``\Z``, because ``$`` also matches before a trailing
# newline ("x\n" would pass and split a line of line protocol in two).
TEXT_RE: Final = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f]*")
_Text = Annotated[str, Meta(max_length=MAX_STRING_LEN, pattern=rf"^{TEXT_RE.pattern}\Z")]
FieldValue: TypeAlias = _Finite | _Int64 | bool | _Text

_Id = Annotated[str, Meta(min_length=1, max_length=MAX_ID_LEN)]
_Name = Annotated[str, Meta(min_length=1, max_length=64)]
_TagValue = Annotated[str, Meta(min_length=1, max_length=MAX_TAG_VALUE_LEN)]
_Ts = Annotated[int, Meta(ge=TS_MIN_NS, lt=TS_MAX_NS)]


class Reading(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    gc=False,
    omit_defaults=True,
    rename={
        "device": "d",
        "measurement": "m",
        "ts": "t",
        "fields": "f",
        "tags": "g",
        "quality": "q",
        "clock": "c",
    },
):
    """One observation of one device at one instant.

    ``ts`` is integer nanoseconds since the Unix epoch (UTC) from the device's clock, or the
    gateway's when the device has none (then ``clock="gateway"``). ``fields`` holds the values
    (float, int, bool, str), ``tags`` low-cardinality labels such as a lane number.
    """

    device: _Id
    measurement: _Name
    ts: _Ts
    fields: Annotated[dict[_Name, FieldValue], Meta(min_length=1, max_length=MAX_FIELDS)]
    tags: Annotated[dict[_Name, _TagValue], Meta(max_length=MAX_TAGS)] = {}
    quality: Quality = "good"
    clock: Clock = "device"


class Batch(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    gc=False,
    rename={"version": "v", "gateway": "gw", "seq": "seq", "readings": "r"},
):
    """A gateway's numbered batch of readings: the unit of spooling, publishing and acking.

    ``seq`` is monotonic per gateway and survives restarts, so the platform sees gaps (lost
    batches) and replays (the same ``seq`` twice).
    """

    version: int = WIRE_VERSION
    gateway: _Id
    seq: Annotated[int, Meta(ge=0, le=2**63 - 1)]
    readings: Annotated[list[Reading], Meta(min_length=1, max_length=MAX_READINGS)]
