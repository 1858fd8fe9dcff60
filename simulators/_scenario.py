"""Scenario files: what city to build, how big, how fast, and which faults to inject.

A scenario is YAML validated into :class:`Scenario` (pydantic, frozen, unknown keys refused).
Errors name the file, the key and the reason (:class:`~simulators.ScenarioError`)::

    name: city                      # shown in births and logs
    seed: 42                        # same seed, same city, same data
    start: "2024-11-28T06:00:00+01:00"   # or "now"; the simulated clock starts here
    tick_s: 10                      # simulated seconds per step
    speed: 1                        # simulated seconds per wall second; 0 = as fast as possible
    city: {centre: [59.9139, 10.7522], timezone: Europe/Oslo,
           grid: {rows: 12, cols: 12, spacing_m: 400, arterial_every: 4}, bus_routes: 6}
    intervals: {loop: 60, bus: 10}  # report interval per device kind (multiples of tick_s)
    gateways:                       # gateways are the sizing unit: profile x count
      - {prefix: cab, count: 120, devices: {loop: 3, air: 1, noise: 1}}
      - {prefix: bus, count: 40, devices: {bus: 1}}
    faults:
      - {type: stuck, at_s: 600, duration_s: 900, kinds: [loop], count: 2}
      - {type: uplink_loss, at_s: 300, duration_s: 120, gateways: [cab-0003]}

``docs/simulators.md`` is the full reference.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import time
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Self, TypeAlias
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from simulators._errors import ScenarioError
from simulators._hostile import HostileCase

__all__ = [
    "DEVICE_KINDS",
    "FAULT_TYPES",
    "CityGrid",
    "CitySpec",
    "DeviceKind",
    "DeviceModeSpec",
    "FaultSpec",
    "FaultType",
    "GatewayProfile",
    "PublishSpec",
    "Scenario",
    "TimetableSpec",
    "load_scenario",
    "packaged_scenarios",
    "scenario_from_dict",
]

DeviceKind: TypeAlias = Literal["loop", "bus", "parking", "air", "noise", "water", "energy"]
DEVICE_KINDS: Final[tuple[DeviceKind, ...]] = (
    "loop",
    "bus",
    "parking",
    "air",
    "noise",
    "water",
    "energy",
)
FaultType: TypeAlias = Literal[
    "stuck",
    "spike",
    "dropout",
    "clock_drift",
    "leak",
    "serial_noise",
    "crc_errors",
    "uplink_loss",
    "reboot",
    "hostile",
]
FAULT_TYPES: Final[tuple[str, ...]] = FaultType.__args__  # type: ignore[attr-defined]
#: Faults that act on a gateway as a whole rather than on its devices' values.
GATEWAY_FAULTS: Final = frozenset({"uplink_loss", "reboot", "hostile"})

_PREFIX_RE: Final = r"^[A-Za-z0-9][A-Za-z0-9-]{0,40}$"
_DEFAULT_INTERVALS: Final[dict[DeviceKind, float]] = {
    "loop": 60.0,
    "bus": 10.0,
    "parking": 60.0,
    "air": 60.0,
    "noise": 60.0,
    "water": 60.0,
    "energy": 30.0,
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CityGrid(_Model):
    """The road grid: ``rows`` x ``cols`` intersections ``spacing_m`` apart."""

    rows: Annotated[int, Field(ge=2, le=200)] = 10
    cols: Annotated[int, Field(ge=2, le=200)] = 10
    spacing_m: Annotated[float, Field(gt=10, le=5000)] = 400.0
    #: Every n-th row and column is an arterial (2 lanes, 50 km/h); the border is a ring
    #: road (3 lanes, 70 km/h); the rest are local streets (1 lane, 40 km/h).
    arterial_every: Annotated[int, Field(ge=1, le=200)] = 4


class TimetableSpec(_Model):
    """The bus timetable (``simulators._timetable``): what an on-time bus does, and how late
    the simulated buses run (the recorded ground truth)."""

    #: Scheduled running speed between stops; a bus stops at every intersection of its route.
    speed_kmh: Annotated[float, Field(ge=5, le=80)] = 25.0
    #: Scheduled dwell at each intermediate stop.
    dwell_s: Annotated[int, Field(ge=0, le=300)] = 20
    #: Least layover at each terminus (the cycle is then rounded up to divide 24 h).
    min_layover_s: Annotated[int, Field(ge=30, le=3600)] = 120
    #: Share of trips that meet a disruption of 4-12 minutes (1.5 times this at peak demand,
    #: about half at night); other trips run 0-2 minutes late, more at peak hours.
    disrupted_share: Annotated[float, Field(ge=0, le=1)] = 0.05
    #: No trip is later than this.
    max_delay_s: Annotated[int, Field(ge=0, le=3600)] = 900


class CitySpec(_Model):
    centre: tuple[float, float] = (59.9139, 10.7522)
    timezone: str = "Europe/Oslo"
    grid: CityGrid = CityGrid()
    bus_routes: Annotated[int, Field(ge=1, le=500)] = 4
    timetable: TimetableSpec = TimetableSpec()

    @field_validator("centre")
    @classmethod
    def _centre(cls, value: tuple[float, float]) -> tuple[float, float]:
        lat, lon = value
        if not (-80 <= lat <= 80 and -179 <= lon <= 179):
            raise ValueError("centre must be [lat, lon] with |lat| <= 80 and |lon| <= 179")
        return value

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value


class GatewayProfile(_Model):
    """``count`` gateways ``{prefix}-0000`` .. each holding ``devices`` (kind -> how many)."""

    prefix: Annotated[str, Field(pattern=_PREFIX_RE)]
    count: Annotated[int, Field(ge=1, le=100_000)]
    devices: dict[DeviceKind, Annotated[int, Field(ge=0, le=600)]]

    @field_validator("devices")
    @classmethod
    def _some(cls, value: dict[DeviceKind, int]) -> dict[DeviceKind, int]:
        if sum(value.values()) == 0:
            raise ValueError("a gateway needs at least one device")
        return value


class FaultSpec(_Model):
    """One fault: what, when (simulated seconds after the start), for how long, on whom.

    Targets: ``gateways`` and/or ``devices`` by id; otherwise ``count`` (or ``fraction``) of
    the devices of ``kinds`` (all kinds if empty), or of all gateways for gateway faults,
    drawn with the scenario seed.
    """

    type: FaultType
    at_s: Annotated[float, Field(ge=0)] = 0.0
    duration_s: Annotated[float, Field(gt=0)] | None = None
    gateways: list[str] = []
    devices: list[str] = []
    kinds: list[DeviceKind] = []
    count: Annotated[int, Field(ge=1)] | None = None
    fraction: Annotated[float, Field(ge=0, le=1)] = 0.0
    #: spike: multiply ``field`` by this.
    factor: float = 8.0
    #: spike and dropout: chance per reading while the fault is active.
    probability: Annotated[float, Field(ge=0, le=1)] = 1.0
    #: clock_drift: device clock runs fast by this many parts per million.
    ppm: float = 2000.0
    #: spike: field to disturb (default: the kind's main field).
    field: str | None = None
    #: leak: extra flow in m3/h at the targeted water meters.
    rate_m3h: Annotated[float, Field(gt=0)] = 12.0
    #: serial_noise: garbage bytes per second on the serial line.
    bytes_per_s: Annotated[int, Field(ge=1)] = 64
    #: hostile: the cases sent in turn (default: all of ``simulators._hostile.HOSTILE_CASES``).
    hostile_cases: list[HostileCase] = []

    @model_validator(mode="after")
    def _targets(self) -> Self:
        if not (self.gateways or self.devices or self.count or self.fraction):
            raise ValueError("a fault needs targets: gateways, devices, count or fraction")
        if self.type in GATEWAY_FAULTS and (self.devices or self.kinds):
            raise ValueError(f"{self.type} acts on gateways: use gateways, count or fraction")
        if self.hostile_cases and self.type != "hostile":
            raise ValueError("hostile_cases belongs to a hostile fault")
        if self.type == "leak" and self.kinds and self.kinds != ["water"]:
            raise ValueError("a leak is in the water network: kinds must be [water]")
        return self

    @property
    def end_s(self) -> float:
        return math.inf if self.duration_s is None else self.at_s + self.duration_s


class DeviceModeSpec(_Model):
    """What ``smartcity sim devices`` serves for real edge agents."""

    #: Loop-detector boards speaking the firmware protocol on ptys.
    firmware: Annotated[int, Field(ge=0, le=64)] = 2
    #: Buses' GPS receivers writing NMEA on ptys.
    nmea: Annotated[int, Field(ge=0, le=64)] = 2
    #: Energy meters behind one Modbus TCP server (one unit id each).
    modbus_meters: Annotated[int, Field(ge=0, le=64)] = 2
    #: Local MQTT sensors (air, noise, parking) publishing JSON to a local broker.
    mqtt_sensors: Annotated[int, Field(ge=0, le=256)] = 3
    mqtt_topic: Annotated[str, Field(pattern=r"^[A-Za-z0-9_./-]{1,100}$")] = "local/sensors"
    #: Seconds between samples on the devices (wall clock).
    sample_interval_s: Annotated[float, Field(ge=0.01, le=3600)] = 1.0


class PublishSpec(_Model):
    """How gateways batch and publish in gateway mode."""

    #: Readings per batch at most (the wire limit is 2,000 and 256 KiB).
    batch_max_readings: Annotated[int, Field(ge=1, le=2000)] = 500
    #: Unacknowledged batches per gateway connection.
    inflight_window: Annotated[int, Field(ge=1, le=1000)] = 32
    #: Wall seconds between health messages per gateway (0: none).
    health_interval_s: Annotated[float, Field(ge=0)] = 30.0
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30


class Scenario(_Model):
    """A whole simulated city, validated. Build with :func:`load_scenario` or directly."""

    name: Annotated[str, Field(min_length=1, max_length=64)]
    description: str = ""
    seed: int = 1
    start: dt.datetime | Literal["now"] = "now"
    tick_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    speed: Annotated[float, Field(ge=0)] = 1.0
    #: Simulated seconds to run (``None``: until stopped).
    duration_s: Annotated[float, Field(gt=0)] | None = None
    topic_root: Annotated[str, Field(min_length=1, max_length=100)] = "sc"
    city: CitySpec = CitySpec()
    intervals: dict[DeviceKind, Annotated[float, Field(gt=0)]] = {}
    gateways: Annotated[list[GatewayProfile], Field(min_length=1)]
    faults: list[FaultSpec] = []
    devices: DeviceModeSpec = DeviceModeSpec()
    publish: PublishSpec = PublishSpec()

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        for kind, interval in self.intervals.items():
            ratio = interval / self.tick_s
            if abs(ratio - round(ratio)) > 1e-9 or round(ratio) < 1:
                raise ValueError(
                    f"intervals.{kind} = {interval} must be a whole multiple of tick_s "
                    f"({self.tick_s})"
                )
        prefixes = [p.prefix for p in self.gateways]
        if len(set(prefixes)) != len(prefixes):
            raise ValueError("gateway prefixes must be unique")
        if any(p.count > 10_000 for p in self.gateways):
            raise ValueError("at most 10,000 gateways per profile (ids have 4 digits)")
        return self

    def interval_s(self, kind: DeviceKind) -> float:
        """Report interval of ``kind``, rounded to whole ticks (at least one tick)."""
        interval = self.intervals.get(kind, _DEFAULT_INTERVALS[kind])
        return max(1, round(interval / self.tick_s)) * self.tick_s

    def start_ns(self, now_ns: int | None = None) -> int:
        """The simulated clock's start, ns since the epoch (``now`` resolved at call time)."""
        if self.start == "now":
            if now_ns is None:
                now_ns = time.time_ns()
            return now_ns
        start = self.start
        if start.tzinfo is None:
            start = start.replace(tzinfo=ZoneInfo(self.city.timezone))
        delta = start - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        return (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1000

    @property
    def gateway_count(self) -> int:
        return sum(p.count for p in self.gateways)

    def device_count(self, kind: DeviceKind | None = None) -> int:
        return sum(
            p.count * n for p in self.gateways for k, n in p.devices.items() if kind in (None, k)
        )

    def with_overrides(self, **changes: Any) -> Scenario:
        """A copy with top-level keys replaced, validated again."""
        data = self.model_dump()
        data.update(changes)
        return Scenario.model_validate(data)

    @classmethod
    def mixed(
        cls,
        *,
        gateways: int,
        devices_per_gateway: int = 5,
        interval_s: float = 1.0,
        seed: int = 1,
        centre: tuple[float, float] = (59.9139, 10.7522),
        prefix: str = "sim-gw",
        topic_root: str = "sc",
    ) -> Scenario:
        """Identical gateways each holding ``devices_per_gateway`` devices of mixed kinds
        (loop, bus, parking, air, energy, noise, water in turn), reporting every tick."""
        order: tuple[DeviceKind, ...] = (
            "loop",
            "bus",
            "parking",
            "air",
            "energy",
            "noise",
            "water",
        )
        devices: dict[DeviceKind, int] = {}
        for i in range(devices_per_gateway):
            kind = order[i % len(order)]
            devices[kind] = devices.get(kind, 0) + 1
        return cls(
            name=f"mixed-{gateways}",
            seed=seed,
            tick_s=interval_s,
            topic_root=topic_root,
            city=CitySpec(centre=centre),
            intervals=dict.fromkeys(DEVICE_KINDS, interval_s),
            gateways=[GatewayProfile(prefix=prefix, count=gateways, devices=devices)],
        )


def packaged_scenarios() -> list[str]:
    """Names of the scenarios shipped in ``simulators/scenarios/``."""
    folder = resources.files("simulators") / "scenarios"
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            out += f".{part}" if out else part
        # pydantic adds union-member names (``function-after[...]``): not keys, skip them
    return out or "(top level)"


def load_scenario(source: str | Path, **overrides: Any) -> Scenario:
    """Load a scenario from a YAML file path, or by name from the packaged ones.

    ``overrides`` replace top-level keys (``seed=7``, ``speed=0``) before validation.
    Raises :class:`ScenarioError` naming the file, the key and the reason.
    """
    path = Path(source)
    name = str(source)
    if path.is_file():
        text = _read(path)
        label = str(path)
    elif name in packaged_scenarios():
        label = f"<packaged {name}.yaml>"
        text = (resources.files("simulators") / "scenarios" / f"{name}.yaml").read_text("utf-8")
    else:
        known = ", ".join(packaged_scenarios())
        raise ScenarioError(f"no such file, and not a packaged scenario ({known})", source=name)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ScenarioError(f"not valid YAML: {exc}", source=label) from exc
    if not isinstance(data, dict):
        raise ScenarioError("the top level must be a mapping", source=label)
    data.update(overrides)
    return scenario_from_dict(data, source=label)


def scenario_from_dict(data: dict[str, Any], *, source: str = "<scenario>") -> Scenario:
    """Validate a mapping into a :class:`Scenario`, translating pydantic's errors."""
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        reason = first["msg"].removeprefix("Value error, ") + more
        raise ScenarioError(reason, source=source, key=_loc(tuple(first["loc"]))) from exc


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"cannot read: {exc}", source=str(path)) from exc
