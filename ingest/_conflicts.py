"""Field-type conflicts: a line InfluxDB refused for one is written again, the field renamed.

InfluxDB 1.x fixes a field's type per shard on its first write. The conformer fixes the types
of the fields the vocabulary declares; any other field is typed by whoever writes it first,
so a hostile gateway writing ``laneCount="x"`` would make every honest ``laneCount=2`` of
that shard a 400 and its whole point a dead letter. Instead (:class:`RenamingWriter`, the
worker's writer)::

    write (one request) ─▶ 400 ─▶ Writer bisects ─▶ refused lines, each with InfluxDB's reason
        │
        └─ for each refused line whose reason parses as a field type conflict (parse_conflict:
           strict, else ignored) on a field of that line with the incoming type, a field the
           vocabulary does not declare:
              ├─ rewrite that line only: the field's key becomes ``<field>:<type>``
              │    (``laneCount:float``; rename_fields, nothing else changes)
              └─ write the rewritten lines again together (one request; a 400 bisected as
                 usual), up to _MAX_ROUNDS per line (InfluxDB names one field per refusal)
                   └─ what InfluxDB still refuses goes on to the dead letters, as before

Reactive and per line only: nothing is learned for later writes and no line InfluxDB did not
refuse is written again under another key. A refused point was not stored (InfluxDB drops the
whole point), so the renamed point is its only copy; the lines a ``partial write`` did store
are only ever written again as they were (bisection). A line's stored key therefore depends
on the line and its shard's state, not on the worker's history: a redelivered, replayed or
other worker's copy of an honest line is refused again and renamed the same way. A field's
key can differ between shards (plain where the honest type came first, renamed where the
hostile one did), so a complete history queries both keys.

Why rewrite the refused lines rather than encode the readings again from the payload: the
rewrite changes exactly the field keys and nothing else (timestamp, tags, coerced values,
the clock-skew verdict taken at receipt), so the point written is the one refused, renamed.
The rewrite parses the line as InfluxDB does (``\\`` escapes the next byte; quoted string
values) and gives up (``None``: the line is dead-lettered as refused) on anything it does not
recognise.

Gateway names match ``NAME_RE``, so no gateway can write ``laneCount:float``: whichever side
wrote first, the other is renamed and nothing is lost. Cost: the bisection any 400 costs,
plus parsing the refused lines' reasons and one request per round for the rewritten lines.
One WARNING per (measurement, field, type) the worker first sees (``_WARNED_MAX`` remembered,
then forgotten).
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from prometheus_client import Counter

from foundation import Backoff
from ingest._metrics import IngestMetrics, Tally
from ingest._sink import Sink
from ingest._writer import RefusedLine, RefusedPart, Writer, WriteResult
from telemetry import MEASUREMENTS, NAME_RE, PLATFORM_MEASUREMENT_PREFIX

__all__ = [
    "FieldTypeConflict", "RenamingWriter", "parse_conflict", "rename_fields", "renamed_key",
]

log = logging.getLogger("ingest")

#: Rewrite rounds per refused line: each renames one more conflicting field of it.
_MAX_ROUNDS: Final = 4
#: (measurement, field, type) conflicts logged once each; past it the set is cleared.
_WARNED_MAX: Final = 10_000
_TYPES: Final = "float|integer|string|boolean|unsigned"
_CONFLICT_RE: Final = re.compile(
    r'field type conflict: input field "([^"\\]*)" on measurement "([^"\\]*)" '
    rf"is type ({_TYPES}), already exists as type ({_TYPES})(?: dropped=\d+)?\Z"
)
#: InfluxDB's name of a field type (as its errors spell it) -> the suffix of a renamed key.
_SUFFIXES: Final[Mapping[str, str]] = {
    "float": "float", "integer": "int", "boolean": "bool", "string": "string",
}
_GATEWAY_RE: Final = re.compile(rb",gateway=((?:[^\\, ]|\\.)*)")
_BOOLEANS: Final = frozenset(
    (b"t", b"T", b"true", b"True", b"TRUE", b"f", b"F", b"false", b"False", b"FALSE")
)


@dataclass(frozen=True, slots=True)
class FieldTypeConflict:
    """InfluxDB refused a point: ``field`` of ``measurement`` came as ``incoming`` while the
    shard holds it as ``existing`` (InfluxDB's type names: float, integer, string...)."""

    measurement: str
    field: str
    incoming: str
    existing: str


def parse_conflict(message: str) -> FieldTypeConflict | None:
    """The conflict InfluxDB's error ``message`` reports, or ``None`` when it is not exactly
    one field type conflict on names a gateway can send (``NAME_RE``).

    >>> parse_conflict('partial write: field type conflict: input field "laneCount" on '
    ...     'measurement "TrafficFlowObserved" is type float, already exists as type string '
    ...     'dropped=1').field
    'laneCount'
    """
    if message.count("field type conflict") != 1:
        return None
    match = _CONFLICT_RE.search(message)
    if match is None:
        return None
    field, measurement, incoming, existing = match.groups()
    if incoming == existing or not (NAME_RE.fullmatch(field) and NAME_RE.fullmatch(measurement)):
        return None
    return FieldTypeConflict(measurement, field, incoming, existing)


def renamed_key(conflict: FieldTypeConflict) -> str | None:
    """The key ``conflict``'s field is written under for its incoming type
    (``laneCount:float``), or ``None`` when it is never renamed: a field the vocabulary
    declares (the conformer fixes its type), the platform's own fields and measurements, or
    a type the encoder never writes."""
    suffix = _SUFFIXES.get(conflict.incoming)
    spec = MEASUREMENTS.get(conflict.measurement)
    if (
        suffix is None
        or conflict.field in ("quality", "clock")
        or (spec is not None and conflict.field in spec.fields)
        or conflict.measurement.startswith(PLATFORM_MEASUREMENT_PREFIX)
    ):
        return None
    return f"{conflict.field}:{suffix}"


def _value_type(value: bytes) -> str | None:
    """InfluxDB's type of a field value as line protocol writes it."""
    if value.startswith(b'"'):
        return "string"
    if value in _BOOLEANS:
        return "boolean"
    if value.endswith(b"i"):
        return "integer"
    if value.endswith(b"u"):
        return "unsigned"
    return "float" if value else None


def _scan_key(line: bytes, start: int, stops: bytes) -> int:
    """Index of the first byte of ``stops`` from ``start`` not escaped by a backslash
    (``len(line)`` when none)."""
    i, n = start, len(line)
    while i < n:
        c = line[i]
        if c == 0x5C:  # backslash: the next byte is literal
            i += 2
            continue
        if c in stops:
            return i
        i += 1
    return n


def rename_fields(
    line: bytes, renames_of: Callable[[str], Mapping[tuple[str, str], str]]
) -> bytes | None:
    """``line`` with each field key renamed as ``renames_of(measurement)`` says for its
    value's type, or ``None`` when the line does not parse (nothing else is changed)::

        measurement[,tag=value...] key=value[,key=value...] timestamp
    """
    head_end = _scan_key(line, 0, b" ")
    measurement_end = _scan_key(line, 0, b", ")
    if head_end >= len(line):
        return None
    try:
        measurement = line[:measurement_end].decode()
    except UnicodeDecodeError:
        return None
    renames = renames_of(measurement)
    out = [line[: head_end + 1]]
    i, n = head_end + 1, len(line)
    while True:
        eq = _scan_key(line, i, b"=, ")
        if eq >= n or line[eq] != 0x3D or eq == i:  # a key must end at "="
            return None
        key = line[i:eq]
        j = eq + 1
        if j < n and line[j] == 0x22:  # a quoted string: up to its unescaped quote
            j += 1
            while j < n and line[j] != 0x22:
                j += 2 if line[j] == 0x5C else 1
            if j >= n:
                return None
            j += 1
        else:
            while j < n and line[j] not in b", ":
                j += 1
        value_type = _value_type(line[eq + 1 : j])
        if value_type is None:
            return None
        new_key = renames.get((key.decode("utf-8", "replace"), value_type)) if renames else None
        out.append(new_key.encode() if new_key is not None else key)
        out.append(line[eq:j])
        if j >= n:
            return None  # no timestamp: not a line the encoder wrote
        out.append(line[j : j + 1])
        i = j + 1
        if line[j] == 0x20:
            out.append(line[i:])
            return b"".join(out)


class RenamingWriter(Writer):
    """A :class:`Writer` that resolves field type conflicts before reporting refused lines:
    each line refused for one is written again with that field renamed (:func:`renamed_key`);
    a part with nothing left refused is reported accepted. Every other verdict is the plain
    writer's, and no line InfluxDB did not refuse is written under another key."""

    def __init__(
        self, sink: Sink, backoff: Backoff, *, metrics: IngestMetrics, tally: Tally,
        worker: str, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(
            sink, backoff, metrics=metrics, tally=tally, worker=worker, sleep=sleep, rng=rng
        )
        self._worker_id = worker
        self._warned: set[tuple[str, str, str]] = set()
        registry = metrics.registry
        self.lines_renamed = Counter(
            "smartcity_ingest_field_renamed_lines",
            "Lines InfluxDB refused for a field type conflict, stored with the conflicting "
            "field renamed '<field>:<type>'",
            registry=registry,
        )
        self.lines_still_refused = Counter(
            "smartcity_ingest_field_rename_refused_lines",
            "Lines renamed after a field type conflict that InfluxDB still refused "
            "(dead-lettered)",
            registry=registry,
        )

    async def write(self, parts: Sequence[bytes]) -> WriteResult:
        """As :meth:`Writer.write`; then the lines refused for a field type conflict are
        renamed and written again (:meth:`_resolve`)."""
        result = await super().write(parts)
        return await self._resolve(result) if result.refused else result

    async def _resolve(self, result: WriteResult) -> WriteResult:
        # (part index, line number) -> the line's latest form and reason, while refused
        pending: dict[tuple[int, int], RefusedLine] = {
            (part.index, line.index): line for part in result.refused for line in part.lines
        }
        renamed: set[tuple[int, int]] = set()
        candidates = list(pending)
        for _ in range(_MAX_ROUNDS):
            retry: list[tuple[tuple[int, int], bytes]] = []
            for where in candidates:
                rewritten = self._renamed(pending[where])
                if rewritten is not None:
                    retry.append((where, rewritten))
            if not retry:
                break
            renamed.update(where for where, _ in retry)
            again = await super().write([b"".join(line + b"\n" for _, line in retry)])
            still = {line.index: line for part in again.refused for line in part.lines}
            candidates = []
            for n, (where, line) in enumerate(retry):
                if n in still:
                    pending[where] = RefusedLine(where[1], still[n].reason, line)
                    candidates.append(where)
                else:
                    del pending[where]
        if renamed:
            unresolved = sum(1 for where in renamed if where in pending)
            self.lines_renamed.inc(len(renamed) - unresolved)
            if unresolved:
                self.lines_still_refused.inc(unresolved)
        accepted = list(result.accepted)
        refused: list[RefusedPart] = []
        for part in result.refused:
            lines = [
                pending[(part.index, ln.index)]
                for ln in part.lines
                if (part.index, ln.index) in pending
            ]
            if lines:
                refused.append(
                    RefusedPart(part.index, part.status, part.message, part.line_count, lines)
                )
            else:
                accepted.append(part.index)
        return WriteResult(accepted=sorted(accepted), refused=refused)

    def _renamed(self, refused: RefusedLine) -> bytes | None:
        """``refused``'s line with the field its reason names renamed (``None``: the reason
        is no field type conflict on a renameable field of this line with that type)."""
        conflict = parse_conflict(refused.reason)
        if conflict is None:
            return None
        key = renamed_key(conflict)
        if key is None:
            return None
        renames = {(conflict.field, conflict.incoming): key}
        rewritten = rename_fields(
            refused.line, lambda m: renames if m == conflict.measurement else {}
        )
        if rewritten is None or rewritten == refused.line:
            return None
        self._warn(conflict, key, refused)
        return rewritten

    def _warn(self, conflict: FieldTypeConflict, key: str, refused: RefusedLine) -> None:
        """One WARNING per (measurement, field, type) this worker sees first."""
        seen = conflict.measurement, conflict.field, conflict.incoming
        if seen in self._warned:
            return
        if len(self._warned) >= _WARNED_MAX:
            self._warned.clear()
        self._warned.add(seen)
        line = refused.line
        gateway = _GATEWAY_RE.search(line[: _scan_key(line, 0, b" ")])
        log.warning("field type conflict: refused lines are stored with the field renamed", extra={
            "worker": self._worker_id,
            "gateway": gateway.group(1).decode("utf-8", "replace") if gateway else None,
            "measurement": conflict.measurement, "field": conflict.field,
            "type": conflict.incoming, "existing_type": conflict.existing,
            "stored_as": key, "error": refused.reason})
