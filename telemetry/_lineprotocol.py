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

Speed comes from caches and from formatting numbers in bulk, not from cleverness per reading:

- a line's whole ``%s`` template (escaped measurement and tag set, field names, quality and
  clock) is cached per (gateway, measurement, device, tags, field names, value types,
  quality, clock): one dictionary lookup per reading. Its parts are cached apart, so a
  new device or a cleared cache costs a concatenation, not an escape;
- the numbers and booleans of a whole body are rendered by one ``msgspec.json`` call (C float
  formatting with the shortest round-trip digits, ~7x faster than ``repr``) and split;
  readings carrying string fields take a per-reading path with line-protocol escaping.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Final, TypeAlias

import msgspec

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
#: gateway, measurement, device, tag items, field names, value types, quality, clock
LineKey: TypeAlias = tuple[
    str, str, str, tuple[tuple[str, str], ...] | None, tuple[str, ...], tuple[type, ...], str,
    str,
]


class LineProtocolEncoder:
    """Encodes validated readings to line protocol (nanosecond precision).

    ``extra_tags`` are added to every point (for example ``{"site": "north"}``); they are part
    of point identity, so they must be constant for a given gateway.
    The encoder is not thread-safe (its caches are plain dicts): use one per thread.
    """

    __slots__ = ("_extra_tags", "_json", "_lines", "_prefixes", "_suffixes", "_templates")

    def __init__(self, *, extra_tags: Mapping[str, str] | None = None) -> None:
        self._extra_tags = dict(extra_tags or {})
        self._prefixes: dict[tuple[str, str, str, tuple[tuple[str, str], ...] | None], str] = {}
        self._templates: dict[tuple[str, tuple[str, ...], tuple[type, ...]], _Template] = {}
        self._suffixes: dict[tuple[str, str], str] = {}
        # The whole line's template per reading shape (see the module docstring); None for
        # a shape with string fields (those are escaped per reading).
        self._lines: dict[LineKey, bytes | None] = {}
        self._json = msgspec.json.Encoder()

    def encode(self, gateway: str, readings: Iterable[Reading]) -> bytes:
        """All readings of one gateway as one line-protocol body."""
        return self._body(gateway, readings)

    def lines(self, gateway: str, readings: Sequence[Reading]) -> list[str]:
        """One newline-terminated line per reading, in order (line ``i`` is reading ``i``)."""
        return [line.decode() + "\n" for line in self.line_list(gateway, readings)]

    def line_list(self, gateway: str, readings: Sequence[Reading]) -> list[bytes]:
        """Line ``i`` (without its newline) is reading ``i``, always.

        Decoded readings never hold a newline (the contract refuses control characters), so
        the body is cut at each ``\n``. A reading built in code is not validated: if the cut
        does not give one line per reading, each reading is encoded on its own, so that a
        caller mapping lines back to readings (bisecting a refused write) never shifts.
        """
        lines = self._body(gateway, readings).split(b"\n")
        if len(lines) == len(readings) + 1:
            lines.pop()
            return lines
        return [self._body(gateway, (r,))[:-1] for r in readings]

    def _body(self, gateway: str, readings: Iterable[Reading]) -> bytes:
        lines_cache = self._lines
        # Pass 1: per reading, the line's %-template (prefix + fields + suffix + time) and
        # its numeric values (fields then timestamp) queued in one flat list.
        shapes: list[bytes] = []
        flat: list[object] = []
        shape = shapes.append
        queue = flat.extend
        push = flat.append
        for r in readings:
            tags = r.tags
            fields = r.fields
            key = (
                gateway, r.measurement, r.device, tuple(tags.items()) if tags else None,
                tuple(fields), tuple(map(type, fields.values())), r.quality, r.clock,
            )
            if key in lines_cache:
                line = lines_cache[key]
            else:
                line = self._line(key)
                if len(lines_cache) >= _CACHE_LIMIT:
                    lines_cache.clear()
                lines_cache[key] = line
            if line is None:
                # Rare: string fields need line-protocol escaping, done here, and the
                # finished line is %-escaped so the body-wide format leaves it alone.
                shape(self._string_line(gateway, r))
            else:
                shape(line)
                queue(fields.values())
            push(r.ts)
        return self._render(shapes, flat)

    def _render(self, shapes: list[bytes], flat: list[object]) -> bytes:
        """Pass 2: one C call renders every number, boolean and timestamp (msgspec's float
        formatting is the shortest round-trip form, ~7x faster than repr), one format
        operation splices them into the whole body. Bytes throughout: the templates are
        UTF-8 already, so the body is never decoded or encoded as a whole."""
        if not shapes:
            return b""
        parts = self._json.encode(flat)[1:-1].split(b",")
        return b"".join(shapes) % tuple(parts)

    def _line(self, key: LineKey) -> bytes | None:
        """The %-template of a line of this shape, UTF-8 (``None``: it has string fields)."""
        gateway, measurement, device, tag_items, names, types, quality, clock = key
        template = self._template(measurement, names, types)
        if template.has_strings:
            return None
        return (
            self._prefix_of(measurement, gateway, device, tag_items)
            + template.fast + self._suffix(quality, clock)
        ).encode()

    def _string_line(self, gateway: str, r: Reading) -> bytes:
        """A line with string fields, rendered but for its timestamp (``%s``)."""
        tags = r.tags
        values = tuple(r.fields.values())
        template = self._template(r.measurement, tuple(r.fields), tuple(map(type, values)))
        escaped = tuple(escape_string_field(v) if type(v) is str else v for v in values)
        text = (template.slow % escaped).replace("%", "%%")
        prefix = self._prefix_of(
            r.measurement, gateway, r.device, tuple(tags.items()) if tags else None
        )
        return f"{prefix}{text}{self._suffix(r.quality, r.clock)}".encode()

    def _prefix_of(
        self, measurement: str, gateway: str, device: str,
        tag_items: tuple[tuple[str, str], ...] | None,
    ) -> str:
        prefixes = self._prefixes
        pkey = (measurement, gateway, device, tag_items)
        prefix = prefixes.get(pkey)
        if prefix is None:
            prefix = self._prefix(measurement, gateway, device, dict(tag_items or ()))
            if len(prefixes) >= _CACHE_LIMIT:
                prefixes.clear()
            prefixes[pkey] = prefix
        return prefix

    def _template(
        self, measurement: str, names: tuple[str, ...], types: tuple[type, ...]
    ) -> _Template:
        templates = self._templates
        tkey = (measurement, names, types)
        template = templates.get(tkey)
        if template is None:
            template = _Template.build(*tkey)
            if len(templates) >= _CACHE_LIMIT:
                templates.clear()
            templates[tkey] = template
        return template

    def _suffix(self, quality: str, clock: str) -> str:
        skey = (quality, clock)
        suffix = self._suffixes.get(skey)
        if suffix is None:
            suffix = f',quality="{quality}"'
            if clock != "device":
                suffix += f',clock="{clock}"'
            suffix += " %s\n"
            self._suffixes[skey] = suffix
        return suffix

    def _prefix(
        self, measurement: str, gateway: str, device: str, tags: Mapping[str, str]
    ) -> str:
        tag_set = {**self._extra_tags, **tags, "gateway": gateway, "device": device}
        rendered = "".join(
            f",{escape_tag(k)}={escape_tag(v)}" for k, v in sorted(tag_set.items())
        )
        # Lines are %-templates: a literal "%" in a name or tag value is doubled.
        return f"{escape_measurement(measurement)}{rendered} ".replace("%", "%%")


class _Template:
    """The field set of one (measurement, field names, value types) signature.

    ``fast`` takes every value as already-rendered text (numbers and booleans from msgspec);
    ``slow`` formats raw values itself and is used when the reading carries strings.
    """

    __slots__ = ("fast", "has_strings", "slow")

    def __init__(self, fast: str, slow: str, has_strings: bool) -> None:
        self.fast = fast
        self.slow = slow
        self.has_strings = has_strings

    @classmethod
    def build(
        cls, measurement: str, keys: tuple[str, ...], types: tuple[type, ...]
    ) -> _Template:
        declared_float = float_fields(measurement)
        fast: list[str] = []
        slow: list[str] = []
        for key, kind in zip(keys, types, strict=True):
            name = escape_tag(key).replace("%", "%%")
            if kind is bool:
                fast.append(f"{name}=%s")
                slow.append(f"{name}=%s")
            elif kind is int:
                # An int in a field the vocabulary declares float is written without "i".
                marker = "" if key in declared_float else "i"
                fast.append(f"{name}=%s{marker}")
                slow.append(f"{name}=%d{marker}")
            elif kind is float:
                fast.append(f"{name}=%s")
                slow.append(f"{name}=%r")
            else:
                fast.append(f'{name}="%s"')
                slow.append(f'{name}="%s"')
        return cls(",".join(fast), ",".join(slow), str in types)
