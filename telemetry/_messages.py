"""Control-plane messages: presence, health, remote config and commands.

All are JSON objects with a ``v`` version like batches, decoded strictly with
:func:`decode_message`. Unknown keys are ignored so that a newer gateway can add
information without breaking an older platform (see ``docs/wire-protocol.md``).
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal, TypeVar

import msgspec
from msgspec import Meta

from telemetry._decoding import LIBRARY_ERRORS, check_size, check_utf8, translate
from telemetry._errors import InvalidPayload, PayloadError
from telemetry._model import WIRE_VERSION

__all__ = [
    "Birth",
    "CommandRequest",
    "CommandResponse",
    "ConfigDesired",
    "ConfigReported",
    "Death",
    "DeviceInfo",
    "Health",
    "Location",
    "SpoolHealth",
    "UpdateReport",
    "decode_message",
    "decode_status",
    "encode_message",
]

_Lat = Annotated[float, Meta(ge=-90.0, le=90.0)]
_Lon = Annotated[float, Meta(ge=-180.0, le=180.0)]


class Location(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """WGS84 position; ``area`` is the district or zone the API filters by."""

    lat: _Lat
    lon: _Lon
    alt: float | None = None
    area: str | None = None


class DeviceInfo(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One device in a gateway's inventory."""

    id: Annotated[str, Meta(min_length=1, max_length=64)]
    kind: str
    #: measurement -> field -> unit (UCUM-style symbols: "km/h", "ug/m3", "m3/h").
    measurements: dict[str, dict[str, str]] = {}
    location: Location | None = None
    #: protocol-specific facts: firmware version, Modbus unit id, serial port ...
    meta: dict[str, str] = {}


class Birth(msgspec.Struct, frozen=True, kw_only=True, tag="online",
            tag_field="state"):
    """Retained on the status topic when a gateway connects."""

    v: int = WIRE_VERSION
    gw: str
    ts: int
    agent: str
    config_version: int = 0
    location: Location | None = None
    devices: list[DeviceInfo] = []


class Death(msgspec.Struct, frozen=True, kw_only=True, tag="offline",
            tag_field="state"):
    """The last will (``reason="lost"``), a clean shutdown (``reason="shutdown"``), or the
    platform's revocation of the gateway's broker user (``reason="revoked"``, published by
    the API that revoked it: a removed user leaves no will)."""

    v: int = WIRE_VERSION
    gw: str
    ts: int | None = None
    reason: Literal["lost", "shutdown", "revoked"] = "lost"


class SpoolHealth(msgspec.Struct, frozen=True, kw_only=True):
    batches: int
    readings: int
    bytes: int
    budget_bytes: int
    oldest_age_s: float | None
    dropped_batches: int
    dropped_readings: int


class UpdateReport(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A gateway's last agent update (``smartcity edge update``, docs/gateway-install.md)."""

    #: The version it updated (or tried to update) to.
    version: str
    #: ``pending``, ``ok``, ``failed`` (nothing switched), ``rolled_back``, ``rollback_failed``.
    status: str
    #: When the result was written, seconds since the epoch.
    ts: float
    previous_version: str | None = None
    reason: str | None = None


class Health(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Periodic gateway health."""

    v: int = WIRE_VERSION
    gw: str
    ts: int
    uptime_s: float
    next_seq: int
    spool: SpoolHealth
    #: stage -> channel -> count of readings that stage dropped.
    dropped: dict[str, dict[str, int]] = {}
    #: input link name -> state ("up", "down", "retrying").
    links: dict[str, str] = {}
    cpu_percent: float | None = None
    rss_bytes: int | None = None
    #: The agent's package version.
    version: str | None = None
    #: Free bytes on the spool's filesystem.
    disk_free_bytes: int | None = None
    #: The last clock check (``sync-time-check``): gateway clock minus server clock (s), the
    #: check's round trip (s), when the server measured it (ns since the epoch).
    clock_offset_s: float | None = None
    clock_delay_s: float | None = None
    clock_checked_ts: int | None = None
    #: The last agent update, if any.
    update: UpdateReport | None = None


class ConfigDesired(msgspec.Struct, frozen=True, kw_only=True):
    """A config the platform wants a gateway to run; ``config`` is the agent's YAML as JSON."""

    v: int = WIRE_VERSION
    version: Annotated[int, Meta(ge=1)]
    config: dict[str, Any]


class ConfigReported(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What the gateway did with a desired config."""

    v: int = WIRE_VERSION
    gw: str
    ts: int
    version: int
    status: Literal["applied", "rejected"]
    reason: str | None = None
    running_version: int


class CommandRequest(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Sent with MQTT v5 ``ResponseTopic`` and ``CorrelationData`` properties; over MQTT
    3.1.1 (the cluster profile), which has no properties, the body carries them instead:
    ``reply_to`` (the response topic) and ``correlation`` (a string). A gateway uses the
    properties when present, else these (:func:`telemetry.reply_address`)."""

    v: int = WIRE_VERSION
    cmd: Annotated[str, Meta(min_length=1, max_length=64)]
    args: dict[str, Any] = {}
    reply_to: Annotated[str, Meta(min_length=1, max_length=256)] | None = None
    correlation: Annotated[str, Meta(min_length=1, max_length=128)] | None = None


class CommandResponse(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """``correlation``: the request's body ``correlation``, echoed (3.1.1 form); with MQTT v5
    the correlation travels as the ``CorrelationData`` property and this stays unset."""

    v: int = WIRE_VERSION
    ok: bool
    result: dict[str, Any] = {}
    error: str | None = None
    correlation: str | None = None


_encoder: Final = msgspec.json.Encoder()
_status_decoder: Final = msgspec.json.Decoder(Birth | Death)

M = TypeVar("M", bound=msgspec.Struct)


def encode_message(message: msgspec.Struct) -> bytes:
    """Encode any control-plane message."""
    return _encoder.encode(message)


def decode_message(payload: bytes | bytearray | memoryview, kind: type[M]) -> M:
    """Decode a control-plane message strictly into ``kind``.

    Like the batch decoders, it raises only :class:`PayloadError` subclasses, for any input.
    """
    check_size(payload)
    check_utf8(payload)
    try:
        return msgspec.json.decode(payload, type=kind)
    except LIBRARY_ERRORS as exc:
        raise _translate(exc) from exc


def decode_status(payload: bytes | bytearray | memoryview) -> Birth | Death:
    """Decode a retained status message (birth or death, told apart by ``state``)."""
    check_size(payload)
    check_utf8(payload)
    try:
        status: Birth | Death = _status_decoder.decode(payload)
    except LIBRARY_ERRORS as exc:
        raise _translate(exc) from exc
    return status


def _translate(exc: BaseException) -> PayloadError:
    # Control-plane errors keep msgspec's whole message (path included) as their reason.
    if isinstance(exc, msgspec.ValidationError):
        return InvalidPayload(str(exc))
    return translate(exc)
