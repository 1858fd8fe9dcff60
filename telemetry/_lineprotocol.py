"""InfluxDB line protocol, written fast.

One line per reading::

    TrafficFlowObserved,device=loop-3,gateway=cab-17,lane=1 intensity=540,quality="good" 17327808e11
    └── measurement ──┘└──── tag set (sorted keys) ──────┘└──────── field set ────────┘└─ ns time ┘

Escaping follows the InfluxDB 1.x/2.x spec: in the measurement, commas and spaces; in tag keys,
tag values and field keys, commas, equals signs and spaces; in string field values, double
quotes and backslashes. Types: float as the shortest repr (``43.5``, ``1e+16``), int with an
``i`` suffix, bool as ``True``/``False``, string quoted. A field the vocabulary declares as float
is written as a float even when the reading carries a Python int, so a sensor sending ``12``
then ``12.5`` never causes a field-type conflict.

Point identity in InfluxDB is measurement + tag set + timestamp, so the tag set is exactly
``gateway``, ``device`` and the reading's own tags: a replayed reading overwrites itself.

Speed comes from caches, not from cleverness per reading: the escaped measurement + tag set
prefix is cached per (measurement, gateway, device, tags), and the field set is rendered
with a ``%``-template cached per (measurement, field names, value types).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from telemetry._model import Reading
from telemetry._vocabulary import float_fields

__all__ = ["LineProtocolEncoder", "escape_measurement", "escape_string_field", "escape_tag"]


def escape_measurement(name: str) -> str:
    return name.replace(",", r"\,").replace(" ", r"\ ")


def escape_tag(text: str) -> str:
    """Escape a tag key, tag value or field key."""
    return text.replace(",", r"\,").replace("=", r"\=").replace(" ", r"\ ")


def escape_string_field(text: str) -> str:
    """Escape a string field value (without the surrounding quotes)."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


_CACHE_LIMIT: Final = 100_000


class LineProtocolEncoder:
    """Encodes validated readings to line protocol (nanosecond precision).

    ``extra_tags`` are added to every point (for example ``{"site": "north"}``); they are part
    of point identity, so they must be constant for a given gateway.
    The encoder is not thread-safe (its caches are plain dicts): use one per thread.
    """

    __slots__ = ("_extra_tags", "_prefixes", "_suffixes", "_templates")

    def __init__(self, *, extra_tags: Mapping[str, str] | None = None) -> None:
        self._extra_tags = dict(extra_tags or {})
        self._prefixes: dict[tuple[str, str, str, tuple[tuple[str, str], ...] | None], str] = {}
        self._templates: dict[tuple[str, tuple[str, ...], tuple[type, ...]], tuple[str, bool]] = {}
        self._suffixes: dict[tuple[str, str], str] = {}

    def encode(self, gateway: str, readings: Iterable[Reading]) -> bytes:
        """All readings of one gateway as one line-protocol body."""
        return "".join(self.lines(gateway, readings)).encode()

    def lines(self, gateway: str, readings: Iterable[Reading]) -> list[str]:
        """One newline-terminated line per reading, in order."""
        prefixes, templates, suffixes = self._prefixes, self._templates, self._suffixes
        out: list[str] = []
        append = out.append
        for r in readings:
            tags = r.tags
            pkey = (r.measurement, gateway, r.device, tuple(tags.items()) if tags else None)
            prefix = prefixes.get(pkey)
            if prefix is None:
                prefix = self._prefix(r.measurement, gateway, r.device, tags)
                if len(prefixes) >= _CACHE_LIMIT:
                    prefixes.clear()
                prefixes[pkey] = prefix
            fields = r.fields
            values = tuple(fields.values())
            tkey = (r.measurement, tuple(fields), tuple(map(type, values)))
            template = templates.get(tkey)
            if template is None:
                template = self._template(*tkey)
                if len(templates) >= _CACHE_LIMIT:
                    templates.clear()
                templates[tkey] = template
            text, has_strings = template
            if has_strings:
                values = tuple(
                    escape_string_field(v) if type(v) is str else v for v in values
                )
            skey = (r.quality, r.clock)
            suffix = suffixes.get(skey)
            if suffix is None:
                suffix = f',quality="{r.quality}"'
                if r.clock != "device":
                    suffix += f',clock="{r.clock}"'
                suffixes[skey] = suffix + " "
                suffix = suffixes[skey]
            append(f"{prefix}{text % values}{suffix}{r.ts}\n")
        return out

    def _prefix(
        self, measurement: str, gateway: str, device: str, tags: Mapping[str, str]
    ) -> str:
        tag_set = {**self._extra_tags, **tags, "gateway": gateway, "device": device}
        rendered = "".join(
            f",{escape_tag(k)}={escape_tag(v)}" for k, v in sorted(tag_set.items())
        )
        return f"{escape_measurement(measurement)}{rendered} "

    @staticmethod
    def _template(
        measurement: str, keys: tuple[str, ...], types: tuple[type, ...]
    ) -> tuple[str, bool]:
        declared_float = float_fields(measurement)
        parts: list[str] = []
        for key, kind in zip(keys, types, strict=True):
            name = escape_tag(key).replace("%", "%%")
            if kind is bool:
                parts.append(f"{name}=%s")
            elif kind is int:
                parts.append(f"{name}=%d" if key in declared_float else f"{name}=%di")
            elif kind is float:
                parts.append(f"{name}=%r")
            else:
                parts.append(f'{name}="%s"')
        return ",".join(parts), str in types
