"""From readings to sealed batches: channel routing, processor chains, batching.

::

    Reading ─▶ ChannelPipeline.ingest ─┬─ numeric field a rule matches ─▶ staged (chan, ts, value)
                                       └─ anything else (bool, str, quality bad, no rule) ─▶ out
    tick ─▶ Chain.process per chain (vectorised) ─▶ readings rebuilt per (device, ts) ─▶ out
    out ─▶ Batcher.add ─▶ size/age reached ─▶ encode_batch ─▶ Spool.append (seq, payload)

Readings of ``quality: bad`` bypass the processors: they would poison filter state, and the
platform wants to see them anyway.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

import msgspec
import numpy as np

from edge_agent._config import BatchConfig, ProcessorRule
from edge_agent._processors import Chain, ChainOutput, StageConfig
from edge_agent._spool import Spool
from telemetry import Batch, FieldValue, PayloadTooLarge, Reading, encode_batch

__all__ = ["Batcher", "ChannelKey", "ChannelPipeline"]

#: (device, measurement, tags as a tuple of items, field)
ChannelKey = tuple[str, str, tuple[tuple[str, str], ...], str]

_enc: Final = msgspec.json.Encoder()


@dataclass(slots=True)
class _Staged:
    chan: list[int] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    val: list[float] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Meta:
    device: str
    measurement: str
    tags: dict[str, str]
    field: str
    clock: str


class ChannelPipeline:
    """Routes channels to the chain of the first matching rule and runs the chains."""

    def __init__(self, rules: list[ProcessorRule]) -> None:
        self.rules = rules
        self.chains = [Chain(list[StageConfig](r.stages)) for r in rules]
        self._meta: list[list[_Meta]] = [[] for _ in rules]
        self._staged = [_Staged() for _ in rules]
        self._routes: dict[ChannelKey, tuple[int, int] | None] = {}
        self._out: list[Reading] = []

    @property
    def channels(self) -> int:
        return sum(c.n for c in self.chains)

    def _route(self, key: ChannelKey, clock: str) -> tuple[int, int] | None:
        device, measurement, tags, fname = key
        for i, rule in enumerate(self.rules):
            if rule.match.matches(device, measurement, fname):
                row = self.chains[i].add_channel()
                self._meta[i].append(_Meta(device, measurement, dict(tags), fname, clock))
                self._routes[key] = (i, row)
                return i, row
        self._routes[key] = None
        return None

    def ingest(self, readings: Iterable[Reading]) -> None:
        """Stage the numeric fields that have a chain; pass everything else through."""
        routes = self._routes
        staged = self._staged
        for r in readings:
            if not self.rules or r.quality == "bad":
                self._out.append(r)
                continue
            tk = tuple(r.tags.items()) if r.tags else ()
            rest: dict[str, float | int | bool | str] = {}
            for fname, value in r.fields.items():
                if type(value) is bool or type(value) is str:
                    rest[fname] = value
                    continue
                key = (r.device, r.measurement, tk, fname)
                route = routes[key] if key in routes else self._route(key, r.clock)
                if route is None:
                    rest[fname] = value
                    continue
                st = staged[route[0]]
                st.chan.append(route[1])
                st.ts.append(r.ts)
                st.val.append(float(value))
            if rest:
                self._out.append(
                    Reading(
                        device=r.device,
                        measurement=r.measurement,
                        ts=r.ts,
                        fields=rest,
                        tags=r.tags,
                        quality=r.quality,
                        clock=r.clock,
                    )
                )

    def tick(self, now_ns: int, *, force: bool = False) -> list[Reading]:
        """Run staged samples through the chains; return every reading ready to batch.

        ``force`` also closes open aggregation windows (shutdown, reconfiguration).
        """
        out, self._out = self._out, []
        for i, chain in enumerate(self.chains):
            st = self._staged[i]
            if st.chan:
                self._staged[i] = _Staged()
                res = chain.process(
                    np.asarray(st.chan, dtype=np.intp),
                    np.asarray(st.ts, dtype=np.int64),
                    np.asarray(st.val, dtype=np.float64),
                )
                out.extend(self._rebuild(i, res))
            if chain.aggregate is not None:
                out.extend(self._rebuild(i, chain.flush(now_ns, force=force)))
        return out

    def _rebuild(self, chain_idx: int, res: ChainOutput) -> list[Reading]:
        if len(res) == 0:
            return []
        meta = self._meta[chain_idx]
        groups: dict[tuple[str, str, tuple[tuple[str, str], ...], int], dict[str, FieldValue]] = {}
        clocks: dict[tuple[str, str, tuple[tuple[str, str], ...], int], str] = {}
        cols = [(suffix, col.tolist()) for suffix, col in res.columns.items()]
        for j, (row, ts) in enumerate(zip(res.chan.tolist(), res.ts.tolist(), strict=True)):
            m = meta[row]
            gk = (m.device, m.measurement, tuple(m.tags.items()), ts)
            fields = groups.get(gk)
            if fields is None:
                fields = groups[gk] = {}
                clocks[gk] = m.clock
            for suffix, values in cols:
                v = values[j]
                fields[m.field + suffix] = int(v) if suffix == "_count" else v
        return [
            Reading(
                device=d,
                measurement=meas,
                ts=ts,
                fields=fields,
                tags=dict(tags),
                clock=clocks[(d, meas, tags, ts)],  # type: ignore[arg-type]
            )
            for (d, meas, tags, ts), fields in groups.items()
        ]

    def dropped(self) -> dict[str, dict[str, int]]:
        """Stage -> ``device/measurement/field`` -> samples that stage dropped (non-zero)."""
        out: dict[str, dict[str, int]] = {}
        for i, chain in enumerate(self.chains):
            meta = self._meta[i]
            for stage, counts in chain.dropped().items():
                for row in np.flatnonzero(counts).tolist():
                    m = meta[row]
                    label = f"{m.device}/{m.measurement}/{m.field}"
                    per = out.setdefault(stage, {})
                    per[label] = per.get(label, 0) + int(counts[row])
        return out


class Batcher:
    """Collects readings and seals them into numbered batches in the spool.

    A batch is sealed when it reaches ``max_readings`` or ``max_bytes`` (estimated from the
    readings' encoded sizes) or when its first reading waited ``max_age_s``.
    """

    _ENVELOPE: Final = 96  # bytes of {"v":..,"gw":..,"seq":..,"r":[]} around the readings

    def __init__(self, gateway: str, cfg: BatchConfig, spool: Spool) -> None:
        self.gateway = gateway
        self.cfg = cfg
        self.spool = spool
        self._pending: list[Reading] = []
        self._bytes = self._ENVELOPE
        self._since: float | None = None
        self.sealed_batches = 0
        self.sealed_readings = 0

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, readings: list[Reading]) -> int:
        """Queue readings; seal full batches. Returns the number of batches sealed."""
        sealed = 0
        limit_n, limit_b = self.cfg.max_readings, self.cfg.max_bytes
        for r in readings:
            size = len(_enc.encode(r)) + 1
            if self._pending and (
                len(self._pending) >= limit_n or self._bytes + size > limit_b
            ):
                sealed += self.seal()
            if self._since is None:
                self._since = time.monotonic()
            self._pending.append(r)
            self._bytes += size
        if len(self._pending) >= limit_n:
            sealed += self.seal()
        return sealed

    def due(self, now_mono: float) -> bool:
        return self._since is not None and now_mono - self._since >= self.cfg.max_age_s

    def seal(self) -> int:
        """Write everything pending to the spool; returns the number of batches written."""
        pending, self._pending = self._pending, []
        self._bytes = self._ENVELOPE
        self._since = None
        return self._write(pending) if pending else 0

    def _write(self, readings: list[Reading]) -> int:
        seq = self.spool.next_seq
        try:
            payload = encode_batch(Batch(gateway=self.gateway, seq=seq, readings=readings))
        except PayloadTooLarge:
            # The size estimate was off (it is per reading); split rather than fail.
            half = len(readings) // 2
            if half == 0:
                raise
            return self._write(readings[:half]) + self._write(readings[half:])
        self.spool.append(seq, payload, len(readings))
        self.sealed_batches += 1
        self.sealed_readings += len(readings)
        return 1
