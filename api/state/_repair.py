"""Gap repair: batches missing from ingest's bookkeeping are asked of their gateway again.

::

    every gap_repair_interval_s
      online gateways ──▶ completeness rows (min/max seq, distinct count) + the highest seq of
                          the window before (where the hole may start)
      with a hole     ──▶ distinct seqs of the gateway's ingest_batch points in the window
                      ──▶ missing = [start, max] - present - asked recently - known gone
                      ──▶ cmd "resend" {"ranges": ...} ── response topic .../cmd/response/<api>
    answer (on the event loop) ──▶ found / missing counted; missing seqs are not asked again

Why holes happen although the edge keeps a batch until its PUBACK: the broker acknowledges a
batch that matched *any* subscriber, e.g. this API's own telemetry subscription while
ingest's shared subscription is not back yet after a broker restart (docs/operations.md).
The gateway still holds such a batch for ``spool.keep_delivered_s`` and publishes it again;
ingest writes it as usual, and InfluxDB point identity turns a batch that arrived twice into
an overwrite, so asking for a seq that did arrive meanwhile is harmless.

The window is the completeness window (``completeness_window`` ending
``completeness_settle_s`` ago). Where the hole starts: after the highest seq in the window
before it, or at seq 0 (a gateway numbers its batches from 0) when that window holds none; a
leading hole is bounded to ``gap_repair_max_seqs`` below the window's lowest seq.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Final

from api._errors import UpstreamUnavailable
from api._metrics import ApiMetrics
from api._settings import ApiSettings
from api.state._broker import BrokerLink
from api.state._live import Inventory
from api.storage import (
    InfluxClient,
    select_completeness,
    select_present_seqs,
    select_previous_max_seq,
)
from telemetry import (
    ID_RE,
    CommandRequest,
    CommandResponse,
    PayloadError,
    decode_message,
    encode_message,
)

__all__ = ["GapRepair", "RepairRound", "seq_ranges"]

log: Final = logging.getLogger("api.repair")


@dataclass(slots=True)
class RepairRound:
    """What one round saw and did (also logged)."""

    gateways: int = 0
    with_gaps: int = 0
    missing: int = 0
    requested: int = 0
    skipped_recent: int = 0
    skipped_gone: int = 0
    requests: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Pending:
    gateway: str
    seqs: int
    sent: float


def seq_ranges(seqs: list[int]) -> list[list[int]]:
    """Sorted distinct seqs as inclusive ``[from, to]`` ranges: [1, 2, 3, 7] -> [[1, 3], [7, 7]]."""
    out: list[list[int]] = []
    for s in seqs:
        if out and s == out[-1][1] + 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return out


class GapRepair:
    """The API's ``gap-repair`` loop; :meth:`on_response` is the broker's response handler."""

    def __init__(
        self,
        settings: ApiSettings,
        *,
        influx: InfluxClient,
        broker: BrokerLink,
        inventory: Inventory,
        metrics: ApiMetrics,
    ) -> None:
        self.settings = settings
        self.influx = influx
        self.broker = broker
        self.inventory = inventory
        self.metrics = metrics
        #: gateway -> seq -> time.monotonic() it was last asked for
        self._asked: dict[str, dict[int, float]] = {}
        #: gateway -> seqs the gateway said it does not hold any more
        self._gone: dict[str, set[int]] = {}
        self._pending: dict[bytes, _Pending] = {}
        broker.on_response(self.on_response)

    @property
    def reask_s(self) -> float:
        return self.settings.gap_repair_interval_s * self.settings.gap_repair_reask_rounds

    async def run(self) -> None:
        while True:
            try:
                await self.repair_round()
            except UpstreamUnavailable as exc:
                log.warning("gap repair round failed", extra={"error": repr(exc)})
            await asyncio.sleep(self.settings.gap_repair_interval_s)

    async def repair_round(self) -> RepairRound:
        """Find holes and ask their gateways to resend; returns what was done."""
        s = self.settings
        now = time.monotonic()
        self._expire(now)
        self.metrics.gap_repair_rounds.inc()
        summary = RepairRound()
        online = {gw for gw, st in self.inventory.gateways.items() if st.state == "online"}
        if not online:
            self.metrics.gap_repair_missing.set(0)
            return summary
        window, settle = s.completeness_window, s.completeness_settle_s
        ranges: dict[str, tuple[int, int, int]] = {}
        for series in await self.influx.query(select_completeness(window, settle)):
            gw = series.tags.get("gateway", "")
            if gw not in online or not series.values:
                continue
            row = dict(zip(series.columns, series.values[0], strict=False))
            if row.get("min_seq") is None or row.get("max_seq") is None:
                continue
            ranges[gw] = (int(row["min_seq"]), int(row["max_seq"]), int(row.get("received") or 0))
        previous: dict[str, int] = {}
        for series in await self.influx.query(select_previous_max_seq(window)):
            gw = series.tags.get("gateway", "")
            if gw in ranges and series.values and series.values[0][1] is not None:
                previous[gw] = int(series.values[0][1])
        summary.gateways = len(ranges)
        cap = s.gap_repair_max_seqs
        for gw, (lo, hi, received) in sorted(ranges.items()):
            start = previous[gw] + 1 if gw in previous else 0
            start = max(min(start, lo), lo - cap)
            if received >= hi - start + 1 or not ID_RE.fullmatch(gw):
                continue
            missing = await self._missing(gw, start, hi)
            if not missing:
                continue
            summary.with_gaps += 1
            summary.missing += len(missing)
            asked = self._asked.setdefault(gw, {})
            gone = self._gone.get(gw, set())
            wanted: list[int] = []
            for seq in reversed(missing):  # newest first: the likeliest to be held still
                if seq in gone:
                    summary.skipped_gone += 1
                elif now - asked.get(seq, -1e18) < self.reask_s:
                    summary.skipped_recent += 1
                elif len(wanted) < cap:
                    wanted.append(seq)
            if gone:  # forget what is below the window: it cannot be asked again
                self._gone[gw] = {q for q in gone if q >= start}
            if wanted:
                wanted.sort()
                if await self._ask(gw, wanted):
                    for seq in wanted:
                        asked[seq] = now
                    summary.requested += len(wanted)
                    summary.requests.append(gw)
        self.metrics.gap_repair_missing.set(summary.missing)
        if summary.with_gaps:
            log.info(
                "gap repair round",
                extra={
                    "gateways": summary.gateways,
                    "with_gaps": summary.with_gaps,
                    "missing": summary.missing,
                    "requested": summary.requested,
                    "skipped_recent": summary.skipped_recent,
                    "skipped_gone": summary.skipped_gone,
                },
            )
        return summary

    async def _missing(self, gw: str, start: int, hi: int) -> list[int]:
        s = self.settings
        q = select_present_seqs(gw, s.completeness_window, s.completeness_settle_s)
        present: set[int] = set()
        for series in await self.influx.query(q):
            col = series.columns.index("distinct") if "distinct" in series.columns else 1
            present.update(int(row[col]) for row in series.values if row[col] is not None)
        return [seq for seq in range(start, hi + 1) if seq not in present]

    async def _ask(self, gw: str, seqs: list[int]) -> bool:
        corr = uuid.uuid4().bytes
        payload = encode_message(CommandRequest(cmd="resend", args={"ranges": seq_ranges(seqs)}))
        # Registered before publishing: the answer can come before the PUBACK is seen here.
        self._pending[corr] = _Pending(gw, len(seqs), time.monotonic())
        try:
            await self.broker.publish(
                self.broker.topics.command(gw),
                payload,
                response_topic=self.broker.response_topic(gw),
                correlation=corr,
            )
        except UpstreamUnavailable as exc:
            self._pending.pop(corr, None)
            self.metrics.gap_repair_requests.labels("failed").inc()
            log.warning("resend request not published", extra={"gateway": gw, "error": str(exc)})
            return False
        self.metrics.gap_repair_requests.labels("sent").inc()
        self.metrics.gap_repair_seqs.labels("requested").inc(len(seqs))
        return True

    def _expire(self, now: float) -> None:
        for corr, p in list(self._pending.items()):
            if now - p.sent >= self.reask_s:
                del self._pending[corr]
                self.metrics.gap_repair_requests.labels("unanswered").inc()
        for gw, asked in list(self._asked.items()):
            kept = {seq: t for seq, t in asked.items() if now - t < self.reask_s}
            if kept:
                self._asked[gw] = kept
            else:
                del self._asked[gw]

    def on_response(self, topic: str, correlation: bytes | None, payload: bytes) -> None:
        """An answer on this API's response topic (event loop)."""
        pending = self._pending.pop(correlation, None) if correlation is not None else None
        if pending is None:
            return  # not ours, or already expired
        try:
            resp = decode_message(payload, CommandResponse)
        except PayloadError as exc:
            self.metrics.gap_repair_requests.labels("refused").inc()
            log.warning("invalid resend answer", extra={"topic": topic, "reason": str(exc)})
            return
        if not resp.ok:
            self.metrics.gap_repair_requests.labels("refused").inc()
            log.warning(
                "gateway refused resend", extra={"gateway": pending.gateway, "error": resp.error}
            )
            return
        self.metrics.gap_repair_requests.labels("answered").inc()
        found = resp.result.get("found")
        missing = resp.result.get("missing")
        missing_seqs = (
            [m for m in missing if isinstance(m, int) and not isinstance(m, bool)]
            if isinstance(missing, list)
            else []
        )
        if isinstance(found, int) and not isinstance(found, bool):
            self.metrics.gap_repair_seqs.labels("found").inc(max(0, found))
        self.metrics.gap_repair_seqs.labels("missing").inc(len(missing_seqs))
        if missing_seqs:
            self._gone.setdefault(pending.gateway, set()).update(missing_seqs)
        log.info(
            "resend answered",
            extra={
                "gateway": pending.gateway,
                "requested": pending.seqs,
                "found": found,
                "missing": len(missing_seqs),
            },
        )
