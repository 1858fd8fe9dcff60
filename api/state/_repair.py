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

Bounded against any seqs a gateway sends (seq 0 then 2**62 are both valid): only the newest
``gap_repair_window`` seqs below the highest are looked at, a jump larger than that between
two seqs is a reset (counted in ``smartcity_api_gap_repair_resets_total``, nothing below it
is asked for), and the missing seqs are walked lazily, newest first, never as a list.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterator
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


@dataclass(slots=True)
class _Holes:
    """The seqs of ``[start, hi]`` that are not in ``present`` (sorted), never materialised:
    at most ``gap_repair_window`` of them."""

    start: int
    hi: int
    present: list[int]

    @property
    def missing(self) -> int:
        return self.hi - self.start + 1 - len(self.present)

    def newest_first(self) -> Iterator[int]:
        top = self.hi
        for seq in reversed(self.present):
            yield from range(top, seq, -1)
            top = seq - 1
        yield from range(top, self.start - 1, -1)


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
        #: gateway -> the seq its numbering last restarted at (counted once)
        self._resets: dict[str, int] = {}
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
        self._resets = {gw: seq for gw, seq in self._resets.items() if gw in ranges}
        cap = s.gap_repair_max_seqs
        for gw, (lo, hi, received) in sorted(ranges.items()):
            start = previous[gw] + 1 if gw in previous else 0
            start = max(min(start, lo), lo - cap)
            if received >= hi - start + 1 or not ID_RE.fullmatch(gw):
                continue
            holes = await self._holes(gw, start, hi, previous.get(gw))
            if holes.missing == 0:
                continue
            summary.with_gaps += 1
            summary.missing += holes.missing
            asked = self._asked.setdefault(gw, {})
            gone = self._gone.get(gw, set())
            wanted: list[int] = []
            for seq in holes.newest_first():  # the newest: the likeliest to be held still
                if seq in gone:
                    summary.skipped_gone += 1
                elif now - asked.get(seq, -1e18) < self.reask_s:
                    summary.skipped_recent += 1
                elif len(wanted) < cap:
                    wanted.append(seq)
            start = holes.start
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

    async def _holes(self, gw: str, start: int, hi: int, previous: int | None) -> _Holes:
        """The seqs missing from ``[start, hi]``, looking only at the newest
        ``gap_repair_window`` seqs and starting after a reset (a jump larger than the window)."""
        s = self.settings
        window = s.gap_repair_window
        floor = max(start, hi - window + 1)
        q = select_present_seqs(gw, s.completeness_window, s.completeness_settle_s)
        inside: set[int] = set()
        below = previous if previous is not None and previous < floor else None
        for series in await self.influx.query(q):
            col = series.columns.index("distinct") if "distinct" in series.columns else 1
            for row in series.values:
                if not isinstance(row[col], int | float):
                    continue
                seq = int(row[col])
                if floor <= seq <= hi:
                    inside.add(seq)
                elif seq < floor and (below is None or seq > below):
                    below = seq
        first = min(inside, default=hi)
        if below is not None and first - below > window:
            # A jump no honest gateway makes between two batches: its numbering restarted
            # (or it lies). Nothing below the jump is asked for.
            if self._resets.get(gw) != first:
                self._resets[gw] = first
                self.metrics.gap_repair_resets.inc()
                log.warning("gateway seq reset", extra={"gateway": gw, "from": below,
                                                        "to": first})
            floor = first
        present = sorted(q for q in inside if q >= floor)
        return _Holes(floor, hi, present)

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
        missing_seqs = missing_seqs[: pending.seqs]  # no more than were asked for
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
