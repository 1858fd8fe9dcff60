"""Modbus register maps (data files) and register decoding. Pure, no I/O besides loading.

A map is YAML (shipped ones live in ``firmware_bridge/maps/``)::

    model: Eastron SDM630-Modbus V2
    measurement: ThreePhaseAcMeasurement
    word_order: big            # big: high word first (ABCD); little: low word first (CDAB)
    groups:                    # one Modbus request per group, polled at its own interval
      - name: instantaneous
        table: input           # input (FC 04) | holding (FC 03)
        interval_s: 1.0
        registers:
          - {field: voltage, address: 0x002A, type: float32, unit: V}
          - {field: powerFactor, address: 0x003E, type: int16, scale: 0.001}

Types: int16, uint16 (one register), int32, uint32, float32 (two registers). A value is
``raw * scale + offset``; an integer type with scale 1 and offset 0 stays an integer.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated, Final, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field

from firmware_bridge._errors import ConfigError
from telemetry import NAME_RE, RESERVED_FIELD_NAMES, FieldValue, float_fields

__all__ = [
    "RegisterGroup",
    "RegisterMap",
    "RegisterSpec",
    "decode_registers",
    "encode_value",
    "load_register_map",
    "parse_register_map",
    "shipped_register_maps",
]

RegisterType = Literal["int16", "uint16", "int32", "uint32", "float32"]
WordOrder = Literal["big", "little"]
MAX_READ_REGISTERS: Final = 125
_WIDTH: Final[dict[str, int]] = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}
_FORMAT: Final[dict[str, str]] = {
    "int16": ">h",
    "uint16": ">H",
    "int32": ">i",
    "uint32": ">I",
    "float32": ">f",
}
_Name = Annotated[str, Field(pattern=f"^{NAME_RE.pattern}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RegisterSpec(_Strict):
    """One value in a group: where it is, how to decode it, which field it becomes."""

    field: _Name
    address: Annotated[int, Field(ge=0, le=0xFFFF)]
    type: RegisterType
    scale: float = 1.0
    offset: float = 0.0
    word_order: WordOrder | None = None
    unit: str = ""
    description: str = ""

    @property
    def width(self) -> int:
        return _WIDTH[self.type]


class RegisterGroup(_Strict):
    """Registers read with one request (at most 125 contiguous registers)."""

    name: _Name
    table: Literal["input", "holding"] = "input"
    interval_s: Annotated[float, Field(gt=0)] = 1.0
    registers: Annotated[tuple[RegisterSpec, ...], Field(min_length=1)]

    @property
    def start(self) -> int:
        return min(r.address for r in self.registers)

    @property
    def count(self) -> int:
        return max(r.address + r.width for r in self.registers) - self.start

    @pydantic.model_validator(mode="after")
    def _check_span(self) -> RegisterGroup:
        if self.count > MAX_READ_REGISTERS:
            raise ValueError(
                f"group spans {self.count} registers; one request reads at most "
                f"{MAX_READ_REGISTERS}: split the group"
            )
        used: dict[int, str] = {}
        for reg in self.registers:
            if reg.field in RESERVED_FIELD_NAMES:
                raise ValueError(f"field {reg.field!r} is reserved")
            for a in range(reg.address, reg.address + reg.width):
                if a in used:
                    raise ValueError(f"register {a} used by {used[a]!r} and {reg.field!r}")
                used[a] = reg.field
        return self


class RegisterMap(_Strict):
    """A meter model's registers, grouped into requests."""

    model: str
    measurement: _Name
    word_order: WordOrder = "big"
    description: str = ""
    groups: Annotated[tuple[RegisterGroup, ...], Field(min_length=1)]

    @pydantic.model_validator(mode="after")
    def _unique(self) -> RegisterMap:
        names = [g.name for g in self.groups]
        if len(set(names)) != len(names):
            raise ValueError("group names must be unique")
        fields = [r.field for g in self.groups for r in g.registers]
        dupes = sorted({f for f in fields if fields.count(f) > 1})
        if dupes:
            raise ValueError(f"fields appear in more than one register: {dupes}")
        return self

    def group(self, name: str) -> RegisterGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(root)"


def parse_register_map(data: object, *, source: str | None = None) -> RegisterMap:
    """Validate a decoded map; :class:`ConfigError` names the first bad key."""
    try:
        return RegisterMap.model_validate(data)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(_loc(tuple(err["loc"])), err["msg"], source=source) from exc


_MAPS: Final = "maps"


def shipped_register_maps() -> list[str]:
    """Names of the maps shipped with the package (``load_register_map(name)``)."""
    folder = resources.files("firmware_bridge").joinpath(_MAPS)
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


def load_register_map(name_or_path: str | Path) -> RegisterMap:
    """Load a shipped map by name (``"eastron-sdm630"``) or any map file by path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        resource = resources.files("firmware_bridge").joinpath(_MAPS, f"{name_or_path}.yaml")
        if not resource.is_file():
            raise ConfigError(
                "register_map",
                f"no shipped map {str(name_or_path)!r}; known: {shipped_register_maps()}",
            )
        text, source = resource.read_text(encoding="utf-8"), f"{name_or_path}.yaml"
    else:
        try:
            text, source = path.read_text(encoding="utf-8"), str(path)
        except OSError as exc:
            raise ConfigError("register_map", f"cannot read {path}: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("(root)", f"not valid YAML: {exc}", source=source) from exc
    return parse_register_map(data, source=source)


def decode_registers(
    register_map: RegisterMap, group: RegisterGroup, registers: Sequence[int]
) -> tuple[dict[str, FieldValue], list[str]]:
    """Decode a group's raw registers (``group.count`` of them, from ``group.start``).

    Returns the fields and the names of values that were not finite (meters answer NaN
    for quantities they do not measure); those are left out of the fields.
    """
    if len(registers) != group.count:
        raise ValueError(
            f"group {group.name!r} needs {group.count} registers, got {len(registers)}"
        )
    floats = float_fields(register_map.measurement)
    start = group.start
    fields: dict[str, FieldValue] = {}
    invalid: list[str] = []
    for reg in group.registers:
        off = reg.address - start
        words = list(registers[off : off + reg.width])
        if (reg.word_order or register_map.word_order) == "little":
            words.reverse()
        raw = struct.pack(f">{len(words)}H", *words)
        (value,) = struct.unpack(_FORMAT[reg.type], raw)
        if reg.scale != 1.0 or reg.offset != 0.0 or reg.type == "float32":
            scaled = float(value) * reg.scale + reg.offset
            if not math.isfinite(scaled):
                invalid.append(reg.field)
                continue
            if reg.type == "float32":
                scaled = float(f"{scaled:.7g}")
            fields[reg.field] = scaled
        else:
            fields[reg.field] = float(value) if reg.field in floats else int(value)
    return fields, invalid


def encode_value(register_map: RegisterMap, reg: RegisterSpec, value: float) -> list[int]:
    """The registers a device holds for ``value`` (the inverse of decoding; simulators)."""
    raw_value = (value - reg.offset) / reg.scale
    if reg.type == "float32":
        raw = struct.pack(">f", raw_value)
    else:
        raw = struct.pack(_FORMAT[reg.type], round(raw_value))
    words = list(struct.unpack(f">{reg.width}H", raw))
    if (reg.word_order or register_map.word_order) == "little":
        words.reverse()
    return words
