"""From readings to processed readings: channel routing and processor chains.

::

    Reading ─▶ ChannelPipeline.ingest ─┬─ numeric field a rule matches ─▶ staged (chan, ts, value)
                                       └─ anything else (bool, str, quality bad, no rule) ─▶ out
    tick ─▶ Chain.process per chain (vectorised) ─▶ readings rebuilt per (device, ts) ─▶ out
    out ─▶ Batcher.add ─▶ size/age reached ─▶ encode_batch ─▶ Spool.append (seq, payload)

Readings of ``quality: bad`` bypass the processors: they would poison filter state, and the
platform wants to see them anyway.

**Checkpoint.** After each tick the agent commits, in one spool transaction, the batches
sealed in that tick and three state blobs (msgpack behind a CRC32, and JSON)::

    processors.layout   rules (config JSON, fingerprint) + channel metadata per chain row
                        (rewritten only when a channel appears or the config changes)
    processors.arrays   every stage's per-row numpy arrays, as raw bytes (dtype, shape, data)
    batcher.pending     readings the batcher holds but has not sealed yet (JSON per reading)

So a sample is, as of the last commit, either in a spooled batch or in this state: never
both, never neither. :meth:`ChannelPipeline.restore` puts the state back into a fresh pipeline;
a chain whose rule (or whose routing: the matches of the rules before it) changed is rebuilt
from the saved rule and force-flushed instead (open windows close early, filters restart).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import msgspec
import numpy as np
from pydantic import ValidationError

from edge_agent._checkpoint import (
    KEY_ARRAYS,
    KEY_LAYOUT,
    STATE_VERSION,
    ArraysBlob,
    ChannelBlob,
    CheckpointError,
    LayoutBlob,
    arrays_decoder,
    layout_decoder,
    open_blob,
    pack_array,
    packed_sealed,
    rules_fingerprint,
    unpack_array,
)
from edge_agent.processors import Chain, ChainOutput, ProcessorRule, StageConfig, StateMismatch
from telemetry import FieldValue, Reading

log = logging.getLogger("edge_agent")

__all__ = ["DEFAULT_MAX_CHANNELS", "ChannelKey", "ChannelPipeline", "RestoreReport"]

#: (device, measurement, tags as a tuple of items, field)
ChannelKey = tuple[str, str, tuple[tuple[str, str], ...], str]


@dataclass(slots=True)
class RestoreReport:
    """What :meth:`ChannelPipeline.restore` did."""

    #: Chains whose state was restored (same rule, same routing).
    restored_chains: list[int] = field(default_factory=list)
    #: Saved chains whose rule or routing changed: force-flushed, their state dropped.
    flushed_chains: list[int] = field(default_factory=list)
    channels: int = 0
    #: Open aggregation windows carried over / closed early by a config change.
    open_windows: int = 0
    closed_windows: int = 0
    #: Readings the force-flushed chains emitted (to be batched).
    readings: list[Reading] = field(default_factory=list)
    same_config: bool = True

    def log(self, logger: logging.Logger, *, gateway: str, when: str, pending: int) -> None:
        """Say what was restored (info) and what a config change flushed (warning)."""
        logger.info(
            f"processor state restored ({when}): {self.channels} channels, "
            f"{self.open_windows} open windows continue, {pending} unsealed readings",
            extra={
                "gateway": gateway,
                "chains": self.restored_chains,
                "channels": self.channels,
                "open_windows": self.open_windows,
                "pending_readings": pending,
            },
        )
        if self.flushed_chains:
            logger.warning(
                f"processor config changed ({when}): state of rule(s) {self.flushed_chains} "
                f"flushed, {self.closed_windows} open windows closed early with their "
                "window-start timestamps, filters of those rules restart empty",
                extra={
                    "gateway": gateway,
                    "flushed_chains": self.flushed_chains,
                    "closed_windows": self.closed_windows,
                },
            )


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


#: Default bound on processor channels (device, measurement, tags, field) of one agent.
DEFAULT_MAX_CHANNELS = 20_000


class ChannelPipeline:
    """Routes channels to the chain of the first matching rule and runs the chains.

    At most ``max_channels`` channels get processor state (and a route cache entry): device
    names and tags can come from a local sensor's topic (``{N}`` templates), so a sensor
    publishing under ever new topics must not grow memory and the checkpoint without bound.
    Past the limit a new channel's samples pass through unprocessed, as sent (nothing is
    lost), counted as stage ``channel_limit`` in :meth:`dropped`, and logged once.
    """

    def __init__(
        self, rules: list[ProcessorRule], *, max_channels: int = DEFAULT_MAX_CHANNELS
    ) -> None:
        self.rules = rules
        self.max_channels = max_channels
        self.over_limit = 0
        self._warned = False
        self.rules_json = [r.model_dump_json() for r in rules]
        self.fingerprint = rules_fingerprint(self.rules_json)
        self.chains = [Chain(list[StageConfig](r.stages)) for r in rules]
        self._meta: list[list[_Meta]] = [[] for _ in rules]
        self._staged = [_Staged() for _ in rules]
        self._routes: dict[ChannelKey, tuple[int, int] | None] = {}
        self._out: list[Reading] = []
        #: Something entered or left the pipeline since the last :meth:`checkpoint`.
        self.dirty = False
        self._layout_dirty = True

    @property
    def channels(self) -> int:
        return sum(c.n for c in self.chains)

    def _route(self, key: ChannelKey, clock: str) -> tuple[int, int] | None:
        device, measurement, tags, fname = key
        if len(self._routes) >= self.max_channels:
            # Not cached, no state: passed through as sent, counted.
            self.over_limit += 1
            if not self._warned:
                self._warned = True
                log.warning(
                    "processor channel limit reached: samples of new channels pass "
                    "unprocessed",
                    extra={"max_channels": self.max_channels, "device": device,
                           "measurement": measurement, "field": fname},
                )
            return None
        for i, rule in enumerate(self.rules):
            if rule.match.matches(device, measurement, fname):
                row = self.chains[i].add_channel()
                self._meta[i].append(_Meta(device, measurement, dict(tags), fname, clock))
                self._routes[key] = (i, row)
                self._layout_dirty = True
                return i, row
        self._routes[key] = None
        return None

    def ingest(self, readings: Iterable[Reading]) -> None:
        """Stage the numeric fields that have a chain; pass everything else through."""
        routes = self._routes
        staged = self._staged
        self.dirty = True
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
        if force:
            self.dirty = True
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
        if out:
            self.dirty = True
        return out

    # -- checkpoint ------------------------------------------------------------------------------
    def checkpoint(self, *, full: bool = False) -> dict[str, bytes | bytearray]:
        """The state blobs to commit (the layout only when it changed, or ``full``); clears
        ``dirty``.

        Call after :meth:`tick` (nothing staged): staged samples are not part of the state.
        """
        if self._out or any(st.chan for st in self._staged):
            raise CheckpointError("checkpoint with staged samples: tick first")
        self.dirty = False
        arrays = ArraysBlob(
            STATE_VERSION,
            self.fingerprint,
            [
                [{k: pack_array(a) for k, a in part.items()} for part in chain.state()]
                for chain in self.chains
            ],
        )
        blobs: dict[str, bytes | bytearray] = {KEY_ARRAYS: packed_sealed(arrays)}
        if self._layout_dirty or full:
            self._layout_dirty = False
            layout = LayoutBlob(
                STATE_VERSION,
                self.fingerprint,
                self.rules_json,
                [
                    [
                        ChannelBlob(m.device, m.measurement, list(m.tags.items()), m.field, m.clock)
                        for m in meta
                    ]
                    for meta in self._meta
                ],
            )
            blobs[KEY_LAYOUT] = packed_sealed(layout)
        return blobs

    def restore(self, blobs: Mapping[str, bytes | bytearray], now_ns: int) -> RestoreReport:
        """Load a checkpoint (:meth:`checkpoint` blobs) into this fresh pipeline.

        A saved chain comes back when this pipeline has the same rule at the same index and
        the same matches before it (so its channels route to it again). Any other saved chain
        is rebuilt from its saved rule, loaded and force-flushed: open windows are emitted now
        with their window-start timestamps (``RestoreReport.readings``), filter state is
        dropped. Raises :class:`CheckpointError`, leaving this pipeline untouched, when the
        blobs are corrupt or do not fit.
        """
        if self.channels or self._out or any(st.chan for st in self._staged):
            raise CheckpointError("restore into a pipeline that already has channels")
        try:
            layout = layout_decoder.decode(open_blob(blobs[KEY_LAYOUT]))
            arrays = arrays_decoder.decode(open_blob(blobs[KEY_ARRAYS]))
        except KeyError as exc:
            raise CheckpointError(f"checkpoint lacks {exc}") from exc
        except (msgspec.DecodeError, ValueError) as exc:  # ValueError: bad UTF-8 in a str
            raise CheckpointError(f"corrupt checkpoint: {exc!r}") from exc
        if layout.version != STATE_VERSION or arrays.version != STATE_VERSION:
            raise CheckpointError(
                f"checkpoint version {layout.version}/{arrays.version}, this agent writes "
                f"{STATE_VERSION}"
            )
        if (
            layout.fingerprint != arrays.fingerprint
            or rules_fingerprint(layout.rules) != layout.fingerprint
        ):
            raise CheckpointError("checkpoint layout and arrays do not belong together")
        n_saved = len(layout.rules)
        if len(layout.channels) != n_saved or len(arrays.chains) != n_saved:
            raise CheckpointError("checkpoint chain counts disagree")
        try:
            saved_rules = [ProcessorRule.model_validate_json(r) for r in layout.rules]
        except ValidationError as exc:
            raise CheckpointError(f"saved processor rules are not valid here: {exc}") from exc
        report = RestoreReport(same_config=layout.fingerprint == self.fingerprint)
        loaded: dict[int, tuple[Chain, list[_Meta]]] = {}
        flushed: list[tuple[int, Chain, list[_Meta]]] = []
        keys: set[ChannelKey] = set()
        for i, rule in enumerate(saved_rules):
            metas = [
                _Meta(c.device, c.measurement, dict(c.tags), c.field, c.clock)
                for c in layout.channels[i]
            ]
            same = (
                i < len(self.rules)
                and layout.rules[i] == self.rules_json[i]
                and all(saved_rules[j].match == self.rules[j].match for j in range(i))
            )
            chain = Chain(list[StageConfig]((self.rules[i] if same else rule).stages))
            try:
                chain.load_state(
                    [{k: unpack_array(a) for k, a in part.items()} for part in arrays.chains[i]],
                    len(metas),
                )
            except StateMismatch as exc:
                raise CheckpointError(f"saved chain {i} does not fit: {exc}") from exc
            if same:
                for m in metas:
                    key = (m.device, m.measurement, tuple(m.tags.items()), m.field)
                    if key in keys:
                        raise CheckpointError(f"channel {key} saved twice")
                    keys.add(key)
                loaded[i] = (chain, metas)
            else:
                flushed.append((i, chain, metas))
        # Everything fits: only now change this pipeline.
        for i, (chain, metas) in loaded.items():
            self.chains[i] = chain
            self._meta[i] = metas
            for row, m in enumerate(metas):
                key = (m.device, m.measurement, tuple(m.tags.items()), m.field)
                self._routes[key] = (i, row)
            report.restored_chains.append(i)
            report.channels += chain.n
            if chain.aggregate is not None:
                report.open_windows += int(np.count_nonzero(chain.aggregate.count[: chain.n]))
        for i, chain, metas in flushed:
            res = chain.flush(now_ns, force=True)
            report.flushed_chains.append(i)
            report.closed_windows += len(res)
            report.readings.extend(self._rebuild_with(metas, res))
        self._layout_dirty = True
        self.dirty = True
        return report

    def _rebuild(self, chain_idx: int, res: ChainOutput) -> list[Reading]:
        return self._rebuild_with(self._meta[chain_idx], res)

    @staticmethod
    def _rebuild_with(meta: list[_Meta], res: ChainOutput) -> list[Reading]:
        if len(res) == 0:
            return []
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
        if self.over_limit:
            out["channel_limit"] = {"past max_channels (passed unprocessed)": self.over_limit}
        for i, chain in enumerate(self.chains):
            meta = self._meta[i]
            for stage, counts in chain.dropped().items():
                for row in np.flatnonzero(counts).tolist():
                    m = meta[row]
                    label = f"{m.device}/{m.measurement}/{m.field}"
                    per = out.setdefault(stage, {})
                    per[label] = per.get(label, 0) + int(counts[row])
        return out
