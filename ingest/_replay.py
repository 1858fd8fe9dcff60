"""Dead-letter replay: stored dead letters through today's checks, into InfluxDB.

What a refusal was for may have been fixed since: a gateway's clock (its readings were too
far ahead), the vocabulary (a field it did not know), a bug (``internal_error``). Replay
reads ``ingest_deadletter`` records from InfluxDB, decodes each original payload again with
the worker's own :class:`~ingest._batcher.MessageDecoder` and the *current* configuration,
and writes what passes, with its bookkeeping point, through the worker's
:class:`~ingest._writer.Writer`.

Nothing is doubled: a point is identified by measurement, tag set and timestamp, so readings
that were stored the first time (the good readings of a partly refused message) are rewritten
as they are, and completeness counts distinct sequence numbers. Nothing is trusted more than
live traffic: every check of the live path applies, and what is still refused is only
reported, not dead-lettered again. A record whose payload was cut (over 64 KiB) cannot be
replayed and is reported as such; its sha256 says which original it was.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from foundation import influxql
from ingest._batcher import MessageDecoder
from ingest._config import IngestConfig
from ingest._metrics import IngestMetrics, Tally
from ingest._sink import make_sink
from ingest._writer import Writer, backoff_for
from telemetry import DEADLETTER_MEASUREMENT, ID_RE, Topics

__all__ = ["ReplayOutcome", "ReplayReport", "deadletter_query", "replay", "stored_records"]

_DURATION: Final = re.compile(r"\d{1,6}[smhdw]")
_WORKER: Final = "replay"


def deadletter_query(
    *, since: str, gateway: str | None = None, kind: str | None = None, limit: int = 100
) -> str:
    """InfluxQL for stored dead letters, newest first. Raises :class:`ValueError` for a
    duration, gateway or kind that is not well-formed (so nothing can be injected)."""
    if not _DURATION.fullmatch(since):
        raise ValueError(f"not a duration: {since!r}")
    where = [f"time > now() - {since}"]
    for key, value in (("gateway", gateway), ("kind", kind)):
        if value is not None:
            if not ID_RE.fullmatch(value) and value != "-":
                raise ValueError(f"not a valid {key}: {value!r}")
            where.append(f"\"{key}\" = '{value}'")
    if not 1 <= limit <= 100_000:
        raise ValueError(f"limit out of range: {limit}")
    return (  # every value matched a strict pattern above
        f'SELECT * FROM "{DEADLETTER_MEASUREMENT}" WHERE {" AND ".join(where)} '  # noqa: S608
        f"ORDER BY time DESC LIMIT {limit}"
    )


def stored_records(config: IngestConfig, query: str) -> Iterator[dict[str, Any]]:
    """The dead-letter points ``query`` selects, as their columns (``record`` is the JSON)."""
    influx = config.influx
    password = influx.password.get_secret_value() if influx.password else None
    answer = influxql(
        influx.url, query, db=influx.database, username=influx.username, password=password
    )
    for result in answer.get("results", []):
        for series in result.get("series", []):
            columns = series["columns"]
            for row in series["values"]:
                yield dict(zip(columns, row, strict=True))


@dataclass(frozen=True, slots=True)
class ReplayOutcome:
    """What became of one dead letter."""

    time: Any
    gateway: str | None
    kind: str | None
    #: ``stored`` (every reading passed), ``partly`` (some still refused), ``refused``
    #: (the whole message still refused), ``truncated`` / ``unreadable`` (no payload to
    #: replay), ``summary`` (a count of records the dead-letter budget left out: nothing to
    #: replay), ``write_refused`` (InfluxDB refused lines)
    result: str
    readings: int = 0
    reason: str = ""


@dataclass(slots=True)
class ReplayReport:
    outcomes: list[ReplayOutcome] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        out: dict[str, int] = {"records": len(self.outcomes), "readings_stored": 0}
        for o in self.outcomes:
            out[o.result] = out.get(o.result, 0) + 1
            if o.result in ("stored", "partly"):
                out["readings_stored"] += o.readings
        return out


def _payload(record: dict[str, Any]) -> bytes | None:
    if record.get("payload_truncated"):
        return None
    text = record.get("payload")
    if not isinstance(text, str):
        return None
    if record.get("payload_encoding") == "base64":
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            return None
    return text.encode()


def replay(
    config: IngestConfig,
    points: Iterable[dict[str, Any]],
    *,
    dry_run: bool = False,
    timeout: float = 60.0,
) -> ReplayReport:
    """Replay stored dead-letter points (as :func:`stored_records` yields them). With
    ``dry_run`` nothing is written: the report says what would pass today. Raises
    :class:`TimeoutError` when InfluxDB does not take the writes within ``timeout`` s."""
    decoder = MessageDecoder(
        Topics(config.mqtt.topic_root), worker=_WORKER,
        max_clock_skew=config.intake.max_clock_skew,
        max_series_per_gateway=config.intake.max_series_per_gateway,
    )
    report = ReplayReport()
    parts: list[bytes] = []
    pending: list[int] = []  # report index of each part
    for point in points:
        try:
            record = json.loads(point.get("record") or "{}")
        except ValueError:
            record = {}
        gateway, kind, when = point.get("gateway"), point.get("kind"), point.get("time")
        if kind == "suppressed":  # the budget's count of what it left out: no payload
            report.outcomes.append(ReplayOutcome(when, gateway, kind, "summary"))
            continue
        topic = record.get("topic")
        payload = _payload(record) if isinstance(record, dict) else None
        if payload is None or not isinstance(topic, str):
            result = "truncated" if record.get("payload_truncated") else "unreadable"
            report.outcomes.append(ReplayOutcome(when, gateway, kind, result))
            continue
        chunk, refusal = decoder.decode(topic, payload, dup=False, now=time.time())
        if chunk is None:
            reason = refusal.reason if refusal else "refused"
            report.outcomes.append(ReplayOutcome(when, gateway, kind, "refused", 0, reason))
            continue
        if refusal is not None and chunk.readings == 0:
            # Its bookkeeping point was written the first time; nothing new would be.
            report.outcomes.append(ReplayOutcome(when, gateway, kind, "refused", 0,
                                                 refusal.reason))
            continue
        result = "partly" if refusal is not None else "stored"
        report.outcomes.append(ReplayOutcome(
            when, gateway, kind, result, chunk.readings,
            refusal.reason if refusal else "",
        ))
        parts.append(chunk.body)
        pending.append(len(report.outcomes) - 1)
    if parts and not dry_run:
        refused = asyncio.run(_write_within(config, parts, timeout))
        for part_index, message in refused.items():
            i = pending[part_index]
            o = report.outcomes[i]
            report.outcomes[i] = ReplayOutcome(
                o.time, o.gateway, o.kind, "write_refused", 0, message
            )
    return report


async def _write_within(
    config: IngestConfig, parts: list[bytes], seconds: float
) -> dict[int, str]:
    async with asyncio.timeout(seconds):
        return await _write(config, parts)


async def _write(config: IngestConfig, parts: list[bytes]) -> dict[int, str]:
    """Write ``parts`` (message bodies) in requests of at most ``batch.max_readings``
    lines; the parts InfluxDB refused (any line of them) with its reason."""
    sink = make_sink(config.influx, max_connections=1)
    metrics = IngestMetrics()
    writer = Writer(
        sink, backoff_for(config.batch.retry), metrics=metrics, tally=Tally(), worker=_WORKER
    )
    refused: dict[int, str] = {}
    try:
        await sink.prepare()
        start, lines = 0, 0
        for end, part in enumerate(parts, 1):
            lines += part.count(b"\n")
            if lines >= config.batch.max_readings or end == len(parts):
                result = await writer.write(parts[start:end])
                for r in result.refused:
                    refused[start + r.index] = r.message
                start, lines = end, 0
    finally:
        await sink.aclose()
    return refused
