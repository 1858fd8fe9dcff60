"""Conformance: a decoded reading made fit for storage, or refused with a reason.

Decoding (``telemetry._codec``) checks that a reading is well formed. Storing it needs more,
because InfluxDB 1.x fixes a field's type per shard on first write: one reading with a string
``intensity`` stamped in tomorrow's shard makes every honest ``intensity`` point of that shard
a "field type conflict". :class:`Conformer` is what stands between a decoded reading and the
line-protocol encoder::

    Reading ──▶ measurement reserved (ingest_*)?        ──▶ refused: reserved_measurement
            ──▶ ts > now + max_clock_skew?               ──▶ refused: future_timestamp
            ──▶ known measurement, field of the vocabulary, wrong type?
                  int -> float field        exact in float64 ──▶ coerced
                  float -> int field        integral, int64  ──▶ coerced
                  anything else (str, bool, lossy)           ──▶ refused: field_type
            ──▶ control character in a string field or tag value ──▶ refused: control_character
            ──▶ (conform_all, with a budget) a new series past the gateway's
                max_series_per_gateway                   ──▶ refused: series_budget
            ──▶ Reading (the same object when nothing changed)

Measurements outside :data:`~telemetry.MEASUREMENTS`, and fields a known measurement does not
declare, are stored as sent (the vocabulary is open, ``docs/wire-protocol.md``); their types
are first-write-wins per shard (the clock-skew check keeps a hostile gateway out of future
shards), and a line InfluxDB refuses for such a field's type conflict is written again by
ingest with that field as ``<field>:<type>`` (``ingest/_conflicts.py``). Pure: the
ingest clock comes in as ``now_ns``; it is only used to refuse, never to stamp.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final, Literal, TypeAlias

import msgspec

from telemetry._bookkeeping import PLATFORM_MEASUREMENT_PREFIX
from telemetry._model import TAG_VALUE_RE, TEXT_RE, FieldValue, Reading
from telemetry._vocabulary import MEASUREMENTS, FieldType

__all__ = [
    "DEFAULT_MAX_CLOCK_SKEW_S",
    "DEFAULT_MAX_SERIES_PER_GATEWAY",
    "Conformer",
    "Nonconformity",
    "NonconformityReason",
]

#: Default allowance for device clocks ahead of the ingest clock.
DEFAULT_MAX_CLOCK_SKEW_S: Final = 300.0

NonconformityReason: TypeAlias = Literal[
    "reserved_measurement", "future_timestamp", "field_type", "control_character",
    "series_budget",
]

#: Default number of distinct series (measurement, device, tag set) one gateway may create.
DEFAULT_MAX_SERIES_PER_GATEWAY: Final = 20_000

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_FLOAT_EXACT: Final = 2**53
_CACHE_LIMIT: Final = 100_000
#: Beyond any int64 nanosecond timestamp: no clock-skew limit.
_NO_LIMIT: Final = 2**63


class Nonconformity(msgspec.Struct, frozen=True):
    """Why a reading may not be stored: ``reason`` (a short class, a metric label),
    ``detail`` (one human line) and ``path`` within the reading (``$.f.intensity``)."""

    reason: NonconformityReason
    detail: str
    path: str = "$"


# What to do with one field of a (measurement, names, types) signature.
_KEEP: Final = 0
_TO_FLOAT: Final = 1
_TO_INT: Final = 2
_Plan: TypeAlias = tuple[int, ...] | Nonconformity | None  # None: keep every field


def _plan_field(name: str, declared: FieldType, kind: type) -> int | Nonconformity:
    if declared == "float":
        if kind is float:
            return _KEEP
        if kind is int:
            return _TO_FLOAT
    elif declared == "int":
        if kind is int:
            return _KEEP
        if kind is float:
            return _TO_INT
    elif declared == "bool":
        if kind is bool:
            return _KEEP
    elif kind is str:
        return _KEEP
    return Nonconformity(
        "field_type",
        f"field {name!r} is {declared} in the vocabulary, not {kind.__name__}",
        f"$.f.{name}",
    )


class Conformer:
    """Checks and coerces readings against the vocabulary and the clock.

    ``max_clock_skew_s``: how far ahead of ``now_ns`` a timestamp may be (``None``: no
    limit). Not thread-safe (plain dict caches): one per worker.
    """

    __slots__ = (
        "_fast", "_max_series", "_max_skew_ns", "_ok_tags", "_ok_texts", "_plans", "_reserved",
        "_series",
    )

    def __init__(
        self,
        *,
        max_clock_skew_s: float | None = DEFAULT_MAX_CLOCK_SKEW_S,
        max_series_per_gateway: int | None = None,
    ) -> None:
        self._max_skew_ns = None if max_clock_skew_s is None else int(max_clock_skew_s * 1e9)
        # Series each gateway was seen to write, up to the budget (None: no budget). InfluxDB
        # 1.x refuses every write that would create a series past max-series-per-database, so
        # one gateway inventing device ids or tag values could otherwise lock every honest
        # gateway's new devices out, and grow the index without bound.
        self._max_series = max_series_per_gateway
        self._series: dict[str, set[tuple[str, str, tuple[tuple[str, str], ...]]]] = {}
        self._plans: dict[tuple[str, tuple[str, ...], tuple[type, ...]], _Plan] = {}
        self._reserved: dict[str, bool] = {}
        self._ok_tags: set[str] = set()
        self._ok_texts: set[str] = set()
        # Per (measurement, field names, value types): whether a reading of that shape is
        # stored as sent once its time and tag values pass (not reserved, no coercion, no
        # string field to check). The fast path of conform_all; anything else takes conform.
        self._fast: dict[tuple[str, tuple[str, ...], tuple[type, ...]], bool] = {}

    def conform(self, reading: Reading, now_ns: int) -> Reading | Nonconformity:
        """The reading to store (coerced where lossless) or why it is refused."""
        measurement = reading.measurement
        reserved = self._reserved.get(measurement)
        if reserved is None:
            reserved = measurement.startswith(PLATFORM_MEASUREMENT_PREFIX)
            if len(self._reserved) >= _CACHE_LIMIT:
                self._reserved.clear()
            self._reserved[measurement] = reserved
        if reserved:
            return Nonconformity(
                "reserved_measurement",
                f"measurement {measurement!r} is the platform's own "
                f"({PLATFORM_MEASUREMENT_PREFIX}*)",
                "$.m",
            )
        if self._max_skew_ns is not None and reading.ts > now_ns + self._max_skew_ns:
            return Nonconformity(
                "future_timestamp",
                f"timestamp is {(reading.ts - now_ns) / 1e9:.0f} s ahead of the ingest clock "
                f"(allowed: {self._max_skew_ns / 1e9:.0f} s)",
                "$.t",
            )
        fields = reading.fields
        values = tuple(fields.values())
        types = tuple(map(type, values))
        key = (measurement, tuple(fields), types)
        plans = self._plans
        if key in plans:
            plan = plans[key]
        else:
            plan = self._plan(*key)
            if len(plans) >= _CACHE_LIMIT:
                plans.clear()
            plans[key] = plan
        if str in types:
            bad = self._text_problem(fields)
            if bad is not None:
                return bad
        if reading.tags:
            bad = self._tag_problem(reading.tags)
            if bad is not None:
                return bad
        if plan is None:
            return reading
        if isinstance(plan, Nonconformity):
            return plan
        return self._coerce(reading, values, plan)

    def conform_all(
        self, readings: Sequence[Reading], now_ns: int, *, gateway: str | None = None
    ) -> tuple[list[Reading], list[tuple[int, Nonconformity]]]:
        """The readings to store, and ``(index, why)`` for each refused one. With a series
        budget and ``gateway``, a reading that would be ``gateway``'s series number
        ``max_series_per_gateway + 1`` is refused (``series_budget``); series it wrote
        before keep being stored.

        The same verdicts as :meth:`conform` per reading, in one loop: a reading whose shape
        (measurement, field names, value types) is known to need nothing, whose time is
        within the allowance and whose tag values were seen before is kept without a call;
        any other reading goes through :meth:`conform`.
        """
        good: list[Reading] = []
        refused: list[tuple[int, Nonconformity]] = []
        known = None
        budget = self._max_series or 0
        if self._max_series is not None and gateway is not None:
            known = self._series.get(gateway)
            if known is None:
                if len(self._series) >= _CACHE_LIMIT:
                    self._series.clear()
                known = self._series[gateway] = set()
        limit = _NO_LIMIT if self._max_skew_ns is None else now_ns + self._max_skew_ns
        fast, ok_tags = self._fast, self._ok_tags
        keep = good.append
        for index, reading in enumerate(readings):
            fields = reading.fields
            shape = (reading.measurement, tuple(fields), tuple(map(type, fields.values())))
            tags = reading.tags
            if (
                fast.get(shape)
                and reading.ts <= limit
                and (not tags or ok_tags.issuperset(tags.values()))
            ):
                outcome = reading
            else:
                checked = self.conform(reading, now_ns)
                if shape not in fast:
                    if len(fast) >= _CACHE_LIMIT:
                        fast.clear()
                    fast[shape] = self._is_fast(*shape)
                if isinstance(checked, Nonconformity):
                    refused.append((index, checked))
                    continue
                outcome = checked
            if known is not None:
                series = (
                    reading.measurement, reading.device,
                    () if not tags else tuple(tags.items()) if len(tags) == 1
                    else tuple(sorted(tags.items())),
                )
                if series not in known:
                    if len(known) >= budget:
                        refused.append((index, Nonconformity(
                            "series_budget",
                            f"gateway {gateway!r} writes {len(known)} series already "
                            f"(intake.max_series_per_gateway); this reading would add one",
                            "$.d",
                        )))
                        continue
                    known.add(series)
            keep(outcome)
        return good, refused

    def _is_fast(self, measurement: str, names: tuple[str, ...], types: tuple[type, ...]) -> bool:
        """Whether a reading of this shape is stored as sent when its time and tags pass."""
        if measurement.startswith(PLATFORM_MEASUREMENT_PREFIX) or str in types:
            return False
        key = (measurement, names, types)
        plan = self._plans[key] if key in self._plans else self._plan(*key)
        return plan is None

    @staticmethod
    def _plan(measurement: str, names: tuple[str, ...], types: tuple[type, ...]) -> _Plan:
        spec = MEASUREMENTS.get(measurement)
        if spec is None:
            return None
        steps: list[int] = []
        for name, kind in zip(names, types, strict=True):
            field = spec.fields.get(name)
            if field is None:
                steps.append(_KEEP)  # not in the vocabulary: stored as sent
                continue
            step = _plan_field(name, field.type, kind)
            if isinstance(step, Nonconformity):
                return step
            steps.append(step)
        return tuple(steps) if any(steps) else None

    @staticmethod
    def _coerce(
        reading: Reading, values: tuple[FieldValue, ...], plan: tuple[int, ...]
    ) -> Reading | Nonconformity:
        fields: dict[str, FieldValue] = {}
        for (name, value), step in zip(zip(reading.fields, values, strict=True), plan,
                                       strict=True):
            if step == _TO_FLOAT:
                assert isinstance(value, int)
                if abs(value) > _FLOAT_EXACT and int(float(value)) != value:
                    return Nonconformity(
                        "field_type", f"int {value} in float field {name!r} is not exact",
                        f"$.f.{name}",
                    )
                value = float(value)
            elif step == _TO_INT:
                assert isinstance(value, float)
                if not value.is_integer() or not _INT64_MIN <= value <= _INT64_MAX:
                    return Nonconformity(
                        "field_type", f"{value!r} in int field {name!r} is not an integer",
                        f"$.f.{name}",
                    )
                value = int(value)
            fields[name] = value
        return msgspec.structs.replace(reading, fields=fields)

    def _text_problem(self, fields: Mapping[str, FieldValue]) -> Nonconformity | None:
        ok = self._ok_texts
        for name, value in fields.items():
            if type(value) is not str or value in ok:
                continue
            if not TEXT_RE.fullmatch(value):
                return Nonconformity(
                    "control_character",
                    f"string field {name!r} holds a control character", f"$.f.{name}",
                )
            if len(ok) >= _CACHE_LIMIT:
                ok.clear()
            ok.add(value)
        return None

    def _tag_problem(self, tags: Mapping[str, str]) -> Nonconformity | None:
        ok = self._ok_tags
        for key, value in tags.items():
            if value in ok:
                continue
            if not TAG_VALUE_RE.fullmatch(value):
                return Nonconformity(
                    "control_character",
                    f"tag value of {key!r} holds a backslash or a control character",
                    f"$.g.{key}",
                )
            if len(ok) >= _CACHE_LIMIT:
                ok.clear()
            ok.add(value)
        return None
