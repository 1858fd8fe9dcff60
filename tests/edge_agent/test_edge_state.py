"""Processor checkpoints: round trip, restore after a config change, the spool transaction,
and checkpoints that cannot be used (pure logic and a local SQLite file, no broker)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent import BatchConfig, Batcher, ChannelPipeline, ProcessorRule, Spool
from edge_agent._checkpoint import (
    KEY_ARRAYS,
    KEY_LAYOUT,
    KEY_PENDING,
    CheckpointError,
    open_blob,
    seal_blob,
)
from telemetry import Reading, decode_batch

NS = 1_000_000_000
T0 = 1_750_000_000 * NS

STAGE_CHOICES: list[dict[str, Any]] = [
    {"type": "validity", "min": -50, "max": 50},
    {"type": "scale", "gain": 2.0, "offset": 1.0},
    {"type": "hampel", "window": 5, "k": 2.0},
    {"type": "deadband", "absolute": 3.0, "max_silence_s": 7},
    {"type": "ema", "alpha": 0.3},
    {"type": "rate_limit", "min_interval_s": 2},
]
AGG = {"type": "aggregate", "window_s": 10, "functions": ["mean", "min", "max", "count", "last"]}


def pipeline(*rules: dict[str, Any]) -> ChannelPipeline:
    return ChannelPipeline([ProcessorRule.model_validate(r) for r in rules])


def readings(values: list[list[float]], start_s: int, devices: int) -> list[Reading]:
    """values[step][device] at 1 s steps from ``start_s``."""
    return [
        Reading(
            device=f"dev-{d}",
            measurement="M",
            ts=T0 + (start_s + s) * NS,
            fields={"v": row[d], "w": row[d] * 0.5},
            tags={"lane": str(d % 2)},
        )
        for s, row in enumerate(values)
        for d in range(devices)
    ]


def as_set(rs: list[Reading]) -> set[tuple[str, int, tuple[tuple[str, Any], ...]]]:
    return {(r.device, r.ts, tuple(sorted(r.fields.items()))) for r in rs}


@settings(max_examples=40, deadline=None)
@given(
    stages=st.lists(st.sampled_from(range(len(STAGE_CHOICES))), max_size=4),
    aggregate=st.booleans(),
    devices=st.integers(1, 4),
    steps=st.integers(2, 40),
    split=st.floats(0, 1),
    seed=st.integers(0, 2**31),
)
def test_restore_then_continue_equals_never_stopped(
    stages: list[int], aggregate: bool, devices: int, steps: int, split: float, seed: int
) -> None:
    """Checkpoint after part 1, restore into a fresh pipeline, run part 2: the output is the
    same as one pipeline that ran both parts (every stage's state survives exactly)."""
    rng = np.random.default_rng(seed)
    vals = (20 + rng.normal(0, 3, (steps, devices))).round(3)
    vals[rng.random((steps, devices)) < 0.1] += 300  # spikes for hampel and validity
    chain = [STAGE_CHOICES[i] for i in stages] + ([AGG] if aggregate else [])
    if not chain:
        chain = [STAGE_CHOICES[0]]
    rules = ({"match": {"field": "v"}, "stages": chain}, {"stages": [STAGE_CHOICES[4]]})
    k = int(split * steps)
    part1, part2 = readings(vals[:k].tolist(), 0, devices), readings(vals[k:].tolist(), k, devices)
    now = T0  # windows close by later samples and the final force, not by the clock

    whole = pipeline(*rules)
    whole.ingest(part1)
    out_whole = whole.tick(now)
    whole.ingest(part2)
    out_whole += whole.tick(now) + whole.tick(now, force=True)

    first = pipeline(*rules)
    first.ingest(part1)
    out = first.tick(now)
    blobs = first.checkpoint()
    second = pipeline(*rules)
    report = second.restore(msgspec.convert(blobs, dict[str, bytes]), now)
    assert report.same_config
    assert report.flushed_chains == []
    assert report.readings == []
    assert report.channels == first.channels
    second.ingest(part2)
    out += second.tick(now) + second.tick(now, force=True)
    assert as_set(out) == as_set(out_whole)
    assert second.dropped() == whole.dropped()


def test_layout_is_written_only_when_channels_change() -> None:
    p = pipeline({"stages": [AGG]})
    p.ingest(readings([[1.0, 2.0]], 0, 2))
    p.tick(T0)
    assert set(p.checkpoint()) == {KEY_ARRAYS, KEY_LAYOUT}
    p.ingest(readings([[3.0, 4.0]], 1, 2))
    p.tick(T0)
    assert set(p.checkpoint()) == {KEY_ARRAYS}
    p.ingest(readings([[3.0, 4.0, 5.0]], 2, 3))  # a new device: new channels
    p.tick(T0)
    assert set(p.checkpoint()) == {KEY_ARRAYS, KEY_LAYOUT}


def test_checkpoint_refuses_staged_samples() -> None:
    p = pipeline({"stages": [AGG]})
    p.ingest(readings([[1.0]], 0, 1))
    with pytest.raises(CheckpointError, match="tick first"):
        p.checkpoint()


def test_changed_rule_flushes_its_windows_and_keeps_the_unchanged_ones() -> None:
    agg_v = {"match": {"field": "v"}, "stages": [AGG]}
    agg_w = {"match": {"field": "w"}, "stages": [AGG]}
    old = pipeline(agg_v, agg_w)
    old.ingest(readings([[1.0], [2.0], [6.0]], 0, 1))
    old.tick(T0)
    blobs = old.checkpoint()
    # rule 1 changes (other functions): its window closes now, rule 0 continues
    new = pipeline(agg_v, {"match": {"field": "w"}, "stages": [{**AGG, "functions": ["max"]}]})
    report = new.restore(blobs, T0)
    assert not report.same_config
    assert report.restored_chains == [0]
    assert report.flushed_chains == [1]
    assert report.closed_windows == 1
    assert report.open_windows == 1
    (rec,) = report.readings
    assert rec.ts == T0  # window start
    assert rec.fields == {"w": 1.5, "w_min": 0.5, "w_max": 3.0, "w_count": 3, "w_last": 3.0}
    new.ingest(readings([[9.0]], 3, 1))
    out = new.tick(T0, force=True)
    v = next(r.fields for r in out if "v" in r.fields)
    assert v["v_count"] == 4  # the three saved samples and the new one
    assert v["v_max"] == 9.0


def test_changed_match_before_a_rule_flushes_that_rule_too() -> None:
    """Routing is first match wins: a rule whose predecessors' matches changed may receive
    other channels, so its saved state is flushed, not restored."""
    old = pipeline({"match": {"field": "w"}, "stages": [AGG]}, {"stages": [AGG]})
    old.ingest(readings([[1.0]], 0, 1))
    old.tick(T0)
    new = pipeline({"match": {"field": "x"}, "stages": [AGG]}, {"stages": [AGG]})
    report = new.restore(old.checkpoint(), T0)
    assert report.restored_chains == []
    assert report.flushed_chains == [0, 1]
    assert {k for r in report.readings for k in r.fields} >= {"v", "w"}


@pytest.mark.parametrize(
    "damage",
    [
        "garbage",
        "truncated",
        "version",
        "dtype",
        "shape",
        "missing",
        "mixed",
        "rules",
        "position",
        "window",
    ],
)
def test_unusable_checkpoint_raises_and_leaves_the_pipeline_untouched(damage: str) -> None:
    old = pipeline({"stages": [STAGE_CHOICES[2], AGG]})
    old.ingest(readings([[1.0, 2.0], [1.5, 2.5]], 0, 2))
    old.tick(T0)
    blobs = old.checkpoint()
    dec = msgspec.msgpack.decode
    arrays: dict[str, Any] = dec(open_blob(blobs[KEY_ARRAYS]))
    layout: dict[str, Any] = dec(open_blob(blobs[KEY_LAYOUT]))
    if damage == "garbage":
        blobs[KEY_ARRAYS] = b"\x00not msgpack"
    elif damage == "truncated":
        blobs[KEY_LAYOUT] = blobs[KEY_LAYOUT][:-7]
    elif damage == "version":
        layout["version"] = arrays["version"] = 99
    elif damage == "dtype":
        arrays["chains"][0][0]["buf"][0] = "<f4"
    elif damage == "shape":
        arrays["chains"][0][1]["sum"][1] = [3]
    elif damage == "missing":
        del blobs[KEY_ARRAYS]
    elif damage == "mixed":
        arrays["fingerprint"] = "0" * 16
    elif damage == "rules":
        layout["rules"] = ['{"stages": []}']
        layout["fingerprint"] = arrays["fingerprint"] = _fingerprint(layout["rules"])
    elif damage == "position":  # a Hampel ring-buffer index past the window
        arrays["chains"][0][0]["pos"][2] = np.array([1, 99], dtype=np.intp).tobytes()
    elif damage == "window":  # an open window whose start is no timestamp
        arrays["chains"][0][1]["wid"][2] = np.array([-5, 0], dtype=np.int64).tobytes()
    if damage not in {"garbage", "truncated", "missing"}:
        blobs[KEY_ARRAYS] = seal_blob(msgspec.msgpack.encode(arrays))
        blobs[KEY_LAYOUT] = seal_blob(msgspec.msgpack.encode(layout))
    new = pipeline({"stages": [STAGE_CHOICES[2], AGG]})
    with pytest.raises(CheckpointError):
        new.restore(blobs, T0)
    assert new.channels == 0
    new.ingest(readings([[1.0, 2.0]], 5, 2))  # and it still works
    assert new.tick(T0, force=True)


def _fingerprint(rules: list[str]) -> str:
    from edge_agent._checkpoint import rules_fingerprint

    return rules_fingerprint(rules)


# -- the spool transaction -------------------------------------------------------------------


def _agent_like_tick(p: ChannelPipeline, b: Batcher, rs: list[Reading]) -> None:
    """What ``EdgeAgent._flush`` does each tick (clock far before the windows end)."""
    p.ingest(rs)
    out = p.tick(T0)
    if out:
        b.add(out)
    if b.due(float("inf")):
        b.seal()
    b.commit(p.checkpoint())


def _spooled(spool: Spool) -> list[Reading]:
    return [
        r
        for sb in spool.oldest(after_id=0, exclude=set(), limit=10**6)
        for r in decode_batch(sb.payload).readings
    ]


def test_crash_loses_exactly_the_uncommitted_tick(tmp_path: Path) -> None:
    """Ticks commit batches and state together; a crash (objects dropped, no commit) loses
    the samples of the last tick only; the restored window counts everything else."""
    rules = [
        {"match": {"device": "agg-*"}, "stages": [AGG]},
        {"match": {"device": "ham-*"}, "stages": [{"type": "hampel", "min_deviation": 1}]},
    ]
    cfg = BatchConfig(max_readings=7, max_age_s=1.0)
    path = tmp_path / "spool.sqlite3"

    def sample(dev: str, i: int) -> Reading:
        v = float(i) if dev.startswith("agg") else 10.0 + i % 2 / 10
        return Reading(device=dev, measurement="M", ts=T0 + i * NS // 10, fields={"v": v})

    def tick(p: ChannelPipeline, b: Batcher, i: int) -> None:
        # 5 samples per tick: 4 into the window, 1 through Hampel (passes, goes to the batcher)
        agg = [sample("agg-1", 5 * i + k) for k in range(4)]
        _agent_like_tick(p, b, [*agg, sample("ham-1", i)])

    with Spool(path, budget_bytes=10**7) as spool:
        p = pipeline(*rules)
        b = Batcher("gw", cfg, spool)
        for i in range(10):
            tick(p, b, i)
        p.ingest([sample("agg-1", 49), sample("ham-1", 999)])  # killed before the commit
        p.tick(T0)
    with Spool(path, budget_bytes=10**7) as spool:
        p = pipeline(*rules)
        b = Batcher("gw", cfg, spool)
        blobs = spool.load_state()
        report = p.restore(blobs, T0)
        assert report.open_windows == 1
        assert b.restore(blobs[KEY_PENDING]) == len(b)
        for i in range(10, 15):
            tick(p, b, i)
        out = p.tick(T0, force=True)
        b.add(out)
        b.seal()
        b.commit(p.checkpoint())
        got = _spooled(spool)
        batches = spool.oldest(after_id=0, exclude=set(), limit=99)
        seqs = [decode_batch(x.payload).seq for x in batches]
    (window,) = [r for r in got if r.device == "agg-1"]
    assert window.fields["v_count"] == 15 * 4  # all but the uncommitted tick's sample
    assert window.fields["v_max"] == 5 * 14 + 3
    ham = sorted((r.ts - T0) * 10 // NS for r in got if r.device == "ham-1")
    assert ham == list(range(15))  # each exactly once: in a batch or pending, never both
    assert seqs == list(range(len(seqs)))


def test_commit_is_one_transaction(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.sqlite3", budget_bytes=10**6) as spool:
        spool.commit([(0, b"a", 1), (1, b"bb", 2)], {"k": b"state"})
        assert spool.stats().readings == 3
        with pytest.raises(Exception, match="next seq"):
            spool.commit([(2, b"c", 1), (4, b"d", 1)], {"k": b"other"})
        assert spool.load_state() == {"k": b"state"}
        assert spool.stats().next_seq == 2
        spool.commit([], {"k": None})
        assert spool.load_state() == {}


@settings(max_examples=150, deadline=None)
@given(
    key=st.sampled_from([KEY_ARRAYS, KEY_LAYOUT]),
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=4),
    cut=st.floats(0, 1),
    reseal=st.booleans(),
)
def test_damaged_blob_restores_or_raises_checkpoint_error_only(
    key: str, flips: list[tuple[float, int]], cut: float, reseal: bool
) -> None:
    """Damage the payload (with ``reseal`` the checksum is made to fit, so the decoder and
    the state checks see it): restore either works or raises CheckpointError, and the
    pipeline keeps working either way."""
    rules = ({"match": {"field": "v"}, "stages": [STAGE_CHOICES[2], AGG]}, {"stages": [AGG]})
    old = pipeline(*rules)
    old.ingest(readings([[1.0, 2.0], [1.5, 2.5]], 0, 2))
    old.tick(T0)
    blobs = old.checkpoint()
    data = bytearray(open_blob(blobs[key]))
    for where, byte in flips:
        data[int(where * len(data))] = byte
    if cut < 0.5:
        data = data[: max(1, int(len(data) * (0.5 + cut)))]
    blobs[key] = seal_blob(bytes(data)) if reseal else blobs[key][:4] + bytes(data)
    new = pipeline(*rules)
    try:
        new.restore(blobs, T0)
    except CheckpointError:
        assert new.channels == 0
    new.ingest(readings([[1.0, 2.0], [300.0, 2.0]], 5, 2))
    new.tick(T0, force=True)
