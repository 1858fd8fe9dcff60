"""Field-type conflicts: InfluxDB's refusal learned, the field stored under a name of its own.

InfluxDB 1.x fixes a field's type per shard on its first write. The conformer fixes the types
of the fields the vocabulary declares; any other field is typed by whoever writes it first,
so a hostile gateway writing ``laneCount="x"`` would make every honest ``laneCount=2`` of
that shard a 400 and its whole point a dead letter. Instead (:class:`RenamingWriter`, the
worker's writer)::

    write refused (400) ─▶ Writer bisects ─▶ refused lines, each with InfluxDB's reason
        │
        └─ reason parses as a field type conflict (parse_conflict: strict, else ignored)
              ├─ learn (measurement, field, incoming type) ─▶ Intake.rename_field:
              │    encoded as ``field:<type>`` from now on (``laneCount:float``); the
              │    cached lines of that measurement are dropped; WARNING once, counted
              ├─ rewrite the refused line: each renamed key in its field set (rename_fields)
              └─ write the rewritten lines again (up to _MAX_ROUNDS: a line may hold
                 several conflicting fields, InfluxDB names one per refusal)
                   └─ what InfluxDB still refuses goes on to the dead letters, as before

Why rewrite the refused lines rather than encode the readings again from the payload: the
rewrite changes exactly the field keys and nothing else (timestamp, tags, coerced values,
the clock-skew verdict taken at receipt), so the point written is the one refused, renamed;
a second decode would run the clock and budget checks again at another time. The rewrite
parses the line as InfluxDB does (``\\`` escapes the next byte; quoted string values) and
gives up (``None``: the line is dead-lettered as refused) on anything it does not recognise.

Gateway names match ``NAME_RE``, so no gateway can write ``laneCount:float``: whichever side
wrote first, the other is renamed and nothing is lost. A hostile gateway inventing conflicts
costs one bisection per new (measurement, field, type), and the renames are bounded
(``MAX_FIELD_RENAMES``, then forgotten and relearned).
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
from ingest._errors import WriteRejected
from ingest._metrics import IngestMetrics, Tally
from ingest._sink import Sink
from ingest._writer import RefusedLine, RefusedPart, Writer, WriteResult
from telemetry import NAME_RE, Intake

__all__ = ["FieldTypeConflict", "RenamingWriter", "parse_conflict", "rename_fields"]

log = logging.getLogger("ingest")

#: Rewrite rounds per write: each renames at least one more field of a still refused line.
_MAX_ROUNDS: Final = 4
_TYPES: Final = "float|integer|string|boolean|unsigned"
_CONFLICT_RE: Final = re.compile(
    r'field type conflict: input field "([^"\\]*)" on measurement "([^"\\]*)" '
    rf"is type ({_TYPES}), already exists as type ({_TYPES})(?: dropped=\d+)?\Z"
)
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


def _conflicting_line(parts: Sequence[bytes], conflict: FieldTypeConflict) -> bytes | None:
    """The first line of ``parts`` carrying ``conflict``'s field with its incoming type."""
    head = (conflict.measurement + ",").encode()
    probe = {(conflict.field, conflict.incoming): "-"}
    for part in parts:
        if head not in part:
            continue
        for line in part.split(b"\n"):
            if line.startswith(head) and rename_fields(line, lambda _m: probe) not in (None, line):
                return line
    return None


class RenamingWriter(Writer):
    """A :class:`Writer` that resolves field type conflicts before reporting refused lines:
    it learns each rename (``intake``, the worker's, whose encoder's templates carry them)
    and writes the refused lines again, renamed; a part with nothing left refused is
    reported accepted. Every other verdict is the plain writer's."""

    def __init__(
        self, sink: Sink, backoff: Backoff, *, intake: Intake, metrics: IngestMetrics,
        tally: Tally, worker: str, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(
            sink, backoff, metrics=metrics, tally=tally, worker=worker, sleep=sleep, rng=rng
        )
        self._intake = intake
        self._worker_id = worker
        registry = metrics.registry
        self.renames_learned = Counter(
            "smartcity_ingest_field_renames",
            "Field type conflicts learned: (measurement, field, type) written under "
            "'<field>:<type>' from then on",
            registry=registry,
        )
        self.writes_renamed = Counter(
            "smartcity_ingest_field_rename_writes",
            "Write requests repeated whole after a field type conflict, the field renamed",
            registry=registry,
        )
        self.lines_renamed = Counter(
            "smartcity_ingest_field_rename_rewrites",
            "Refused lines written again with a conflicting field renamed",
            registry=registry,
        )

    async def write(self, parts: Sequence[bytes]) -> WriteResult:
        """As :meth:`Writer.write`; a 400 naming a field type conflict is learned and the
        whole write repeated, renamed, before any bisection (one request per conflict, not
        one per line); lines still refused after bisection are resolved one by one."""
        parts = list(parts)
        for _ in range(_MAX_ROUNDS):
            if not parts:
                break
            try:
                await self.write_body(b"".join(parts))
            except WriteRejected as exc:
                conflict = parse_conflict(exc.message)
                line = None if conflict is None else _conflicting_line(parts, conflict)
                measurement = self._learn(conflict, exc.message, line)
                renamed = None if measurement is None else self._rename_parts(parts, measurement)
                if renamed is None:
                    break
                self.writes_renamed.inc()
                parts = renamed
                continue
            return WriteResult(accepted=range(len(parts)), refused=[])
        result = await super().write(parts)
        return await self._resolve(result) if result.refused else result

    def _rename_parts(self, parts: list[bytes], measurement: str) -> list[bytes] | None:
        """``parts`` with the learned renames of ``measurement`` applied to its lines
        (``None``: nothing changed, so writing them again is pointless)."""
        head = (measurement + ",").encode()
        renames_of = self._intake.field_renames
        changed = False
        out: list[bytes] = []
        for part in parts:
            if head not in part:
                out.append(part)
                continue
            lines = part.split(b"\n")
            for n, line in enumerate(lines):
                if line.startswith(head):
                    renamed = rename_fields(line, renames_of)
                    if renamed is not None and renamed != line:
                        lines[n] = renamed
                        changed = True
            out.append(b"\n".join(lines))
        return out if changed else None

    async def _resolve(self, result: WriteResult) -> WriteResult:
        # (part index, line number) -> the line's latest form and reason, while refused
        pending: dict[tuple[int, int], RefusedLine] = {
            (part.index, line.index): line for part in result.refused for line in part.lines
        }
        for _ in range(_MAX_ROUNDS):
            retry: list[tuple[tuple[int, int], bytes]] = []
            for where, line_refused in pending.items():
                rewritten = self._renamed(line_refused)
                if rewritten is not None:
                    retry.append((where, rewritten))
            if not retry:
                break
            self.lines_renamed.inc(len(retry))
            again = await super().write([b"".join(line + b"\n" for _, line in retry)])
            still = {line.index: line for part in again.refused for line in part.lines}
            for n, (where, line) in enumerate(retry):
                if n in still:
                    pending[where] = RefusedLine(where[1], still[n].reason, line)
                else:
                    del pending[where]
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
        """The line renamed after learning from its reason (``None``: no rename applies)."""
        if self._learn(parse_conflict(refused.reason), refused.reason, refused.line) is None:
            return None
        rewritten = rename_fields(refused.line, self._intake.field_renames)
        return rewritten if rewritten is not None and rewritten != refused.line else None

    def _learn(
        self, conflict: FieldTypeConflict | None, message: str, line: bytes | None = None
    ) -> str | None:
        """Learn ``conflict``'s rename (logged once); return its measurement, or ``None``
        when there is none to apply (no conflict, or a field that is never renamed)."""
        if conflict is None:
            return None
        intake = self._intake
        known = conflict.field, conflict.incoming
        if known in intake.field_renames(conflict.measurement):
            return conflict.measurement
        stored = intake.rename_field(conflict.measurement, *known)
        if stored is None:
            return None
        self.renames_learned.inc()
        # The gateway whose point conflicted: the line's tag (a whole-write 400 names none).
        gateway = None if line is None else _GATEWAY_RE.search(line[: _scan_key(line, 0, b" ")])
        log.warning("field type conflict: the field is stored renamed for this type", extra={
            "worker": self._worker_id,
            "gateway": gateway.group(1).decode("utf-8", "replace") if gateway else None,
            "measurement": conflict.measurement, "field": conflict.field,
            "type": conflict.incoming, "existing_type": conflict.existing,
            "stored_as": stored, "error": message})
        return conflict.measurement
