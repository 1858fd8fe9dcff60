"""Processor stages against crafted series and properties (hypothesis)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from edge_agent import Chain, ChannelPipeline, ProcessorRule, split_rounds
from edge_agent._config import parse_config
from edge_agent._errors import ConfigError
from telemetry import Reading

NS = 1_000_000_000
T0 = 1_750_000_000 * NS


def chain(*stages: dict[str, Any], channels: int = 1) -> Chain:
    rule = ProcessorRule.model_validate({"stages": list(stages)})
    c = Chain(list(rule.stages))
    for _ in range(channels):
        c.add_channel()
    return c


def run_series(c: Chain, values: list[float] | np.ndarray, dt_s: float = 1.0, chan: int = 0):
    n = len(values)
    ts = T0 + (np.arange(n) * dt_s * NS).astype(np.int64)
    return c.process(np.full(n, chan, dtype=np.intp), ts, np.asarray(values, dtype=np.float64))


def test_validity_drops_out_of_range_and_non_finite() -> None:
    c = chain({"type": "validity", "min": 0, "max": 10})
    out = run_series(c, [1.0, -1.0, 11.0, float("nan"), float("inf"), 10.0])
    assert out.columns[""].tolist() == [1.0, 10.0]
    assert c.dropped()["validity"].tolist() == [4]


def test_scale_unit_conversion_then_calibration() -> None:
    c = chain({"type": "scale", "from_unit": "degF", "to_unit": "Cel", "gain": 2.0, "offset": 1.0})
    out = run_series(c, [32.0, 212.0])
    assert out.columns[""] == pytest.approx([1.0, 201.0])


def test_hampel_rejects_a_spike_and_accepts_a_level_shift() -> None:
    c = chain({"type": "hampel", "window": 7, "k": 3.0})
    rng = np.random.default_rng(1)
    base = 20.0 + rng.normal(0, 0.1, 40)
    series = base.copy()
    series[20] = 80.0  # a spike
    series[30:] += 5.0  # a genuine level shift
    out = run_series(c, series)
    kept_ts = ((out.ts - T0) // NS).tolist()
    assert 20 not in kept_ts
    assert c.dropped()["hampel"][0] >= 1
    # after half a window the new level is accepted
    assert all(i in kept_ts for i in range(34, 40))


def test_deadband_passes_a_slow_ramp_at_the_right_points() -> None:
    c = chain({"type": "deadband", "absolute": 1.0, "max_silence_s": 1000})
    ramp = [i * 0.25 for i in range(21)]  # 0, 0.25, ... 5.0 (exact in binary)
    out = run_series(c, ramp)
    assert out.columns[""].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert c.dropped()["deadband"][0] == 21 - 6


def test_deadband_percent_and_max_silence_report_a_flat_signal() -> None:
    c = chain({"type": "deadband", "percent": 10, "max_silence_s": 5})
    out = run_series(c, [100.0] * 12 + [109.0, 111.0])
    secs = ((out.ts - T0) // NS).tolist()
    # first sample, then every 5 s of silence, then the >=10 % move (111 vs last reported 100)
    assert secs == [0, 5, 10, 13]


def test_window_aggregates_equal_numpy() -> None:
    c = chain(
        {"type": "aggregate", "window_s": 10, "functions": ["mean", "min", "max", "count", "last"]}
    )
    rng = np.random.default_rng(7)
    values = rng.normal(50, 10, 95)
    out = run_series(c, values)
    tail = c.flush(0, force=True)
    ts = np.concatenate([out.ts, tail.ts])
    cols = {k: np.concatenate([out.columns[k], tail.columns[k]]) for k in out.columns}
    assert ((ts - T0) // NS).tolist() == [w * 10 for w in range(10)]
    windows = [values[i : i + 10] for i in range(0, 95, 10)]
    assert cols[""] == pytest.approx([w.mean() for w in windows])
    assert cols["_min"].tolist() == [w.min() for w in windows]
    assert cols["_max"].tolist() == [w.max() for w in windows]
    assert cols["_count"].tolist() == [len(w) for w in windows]
    assert cols["_last"].tolist() == [w[-1] for w in windows]


def test_aggregate_emits_after_grace_without_new_samples() -> None:
    c = chain({"type": "aggregate", "window_s": 10, "grace_s": 1})
    run_series(c, [1.0, 2.0, 3.0])
    assert len(c.flush(T0 + 10 * NS)) == 0
    out = c.flush(T0 + 11 * NS)
    assert out.columns[""].tolist() == [2.0]


def test_ema_and_rate_limit() -> None:
    c = chain({"type": "ema", "alpha": 0.5})
    assert run_series(c, [0.0, 10.0, 10.0]).columns[""].tolist() == [0.0, 5.0, 7.5]
    r = chain({"type": "rate_limit", "min_interval_s": 2})
    out = run_series(r, [1.0] * 7)
    assert ((out.ts - T0) // NS).tolist() == [0, 2, 4, 6]
    assert r.dropped()["rate_limit"].tolist() == [3]


def test_channels_are_independent_and_counted_per_channel() -> None:
    c = chain({"type": "validity", "max": 5}, {"type": "deadband", "absolute": 1}, channels=3)
    chan = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2], dtype=np.intp)
    ts = T0 + np.repeat(np.arange(3), 3).astype(np.int64) * NS
    val = np.array([1, 1, 1, 1.5, 9, 3, 2, 9, 3.2])
    out = c.process(chan, ts, val)
    got = sorted(zip(out.chan.tolist(), ((out.ts - T0) // NS).tolist(), strict=True))
    assert got == [(0, 0), (0, 2), (1, 0), (2, 0), (2, 1)]
    assert c.dropped()["validity"].tolist() == [0, 2, 0]
    assert c.dropped()["deadband"].tolist() == [1, 0, 1]


def test_pipeline_routes_first_matching_rule_and_passes_the_rest() -> None:
    cfg = parse_config(
        {
            "gateway": {"id": "gw"},
            "broker": {"host": "localhost"},
            "processors": [
                {"match": {"field": "speed"}, "stages": [{"type": "validity", "max": 200}]},
                {"match": {"device": "loop-*"}, "stages": [{"type": "scale", "gain": 2}]},
            ],
        },
        source="t",
    )
    p = ChannelPipeline(list(cfg.processors))
    p.ingest(
        [
            Reading(device="loop-1", measurement="M", ts=T0, fields={"speed": 300.0, "n": 2}),
            Reading(device="cam-1", measurement="M", ts=T0, fields={"n": 2, "ok": True}),
        ]
    )
    out = {(r.device, k): v for r in p.tick(T0) for k, v in r.fields.items()}
    assert out == {("loop-1", "n"): 4.0, ("cam-1", "n"): 2, ("cam-1", "ok"): True}
    assert p.dropped() == {"validity": {"loop-1/M/speed": 1}}


def test_aggregate_must_be_last_and_errors_name_the_key() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(
            {
                "gateway": {"id": "gw"},
                "broker": {"host": "localhost"},
                "processors": [
                    {"stages": [{"type": "aggregate", "window_s": 1}, {"type": "ema", "alpha": 2}]}
                ],
            },
            source="x.yaml",
        )
    assert "x.yaml: processors[0].stages[1].alpha: Input should be less" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_config(
            {
                "gateway": {"id": "gw"},
                "broker": {"host": "localhost"},
                "processors": [
                    {"stages": [{"type": "aggregate", "window_s": 1}, {"type": "ema", "alpha": 1}]}
                ],
            },
            source="x.yaml",
        )
    assert "processors[0]: aggregate (stage 0) must be the last stage" in str(err.value)


# -- properties ------------------------------------------------------------------------------

finite = st.floats(-1e6, 1e6, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=60), st.integers(0, 2**31))
def test_split_rounds_partitions_with_unique_channels_in_time_order(
    chans: list[int], seed: int
) -> None:
    chan = np.asarray(chans, dtype=np.intp)
    ts = np.random.default_rng(seed).integers(0, 1000, chan.shape[0]).astype(np.int64)
    rounds = split_rounds(chan, ts)
    seen = np.concatenate(rounds)
    assert sorted(seen.tolist()) == list(range(chan.shape[0]))
    last: dict[int, int] = {}
    for r in rounds:
        assert len(set(chan[r].tolist())) == r.shape[0]
        for i in r.tolist():
            c = int(chan[i])
            assert ts[i] >= last.get(c, -1)
            last[c] = int(ts[i])


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.integers(1, 80), elements=finite), st.floats(0.01, 1000))
def test_deadband_matches_a_scalar_reference(values: np.ndarray, band: float) -> None:
    c = chain({"type": "deadband", "absolute": band, "max_silence_s": 1e6})
    got = run_series(c, values).columns[""].tolist()
    want, last = [], None
    for v in values.tolist():
        if last is None or abs(v - last) >= band:
            want.append(v)
            last = v
    assert got == want


@settings(max_examples=40, deadline=None)
@given(
    arrays(np.float64, st.integers(1, 120), elements=finite),
    st.integers(1, 4),
    st.sampled_from([1.0, 2.5, 10.0]),
)
def test_aggregates_match_numpy_for_any_data(
    values: np.ndarray, channels: int, window_s: float
) -> None:
    c = chain(
        {"type": "aggregate", "window_s": window_s, "functions": ["mean", "min", "max", "count"]},
        channels=channels,
    )
    n = values.shape[0]
    chan = (np.arange(n) % channels).astype(np.intp)
    ts = T0 + (np.arange(n) * NS // 3).astype(np.int64)
    out = c.process(chan, ts, values)
    tail = c.flush(0, force=True)
    rows = np.concatenate([out.chan, tail.chan])
    wts = np.concatenate([out.ts, tail.ts])
    cols = {k: np.concatenate([out.columns[k], tail.columns[k]]) for k in out.columns}
    wid = ts // int(window_s * NS)
    expected = {}
    for ch in range(channels):
        for w in np.unique(wid[chan == ch]):
            sel = values[(chan == ch) & (wid == w)]
            key = (ch, int(w) * int(window_s * NS))
            expected[key] = (sel.mean(), sel.min(), sel.max(), len(sel))
    got = {
        (int(r), int(t)): (cols[""][i], cols["_min"][i], cols["_max"][i], int(cols["_count"][i]))
        for i, (r, t) in enumerate(zip(rows, wts, strict=True))
    }
    assert got.keys() == expected.keys()
    for key, (mean, lo, hi, cnt) in expected.items():
        g = got[key]
        assert g[0] == pytest.approx(mean, rel=1e-9, abs=1e-6)
        assert (g[1], g[2], g[3]) == (lo, hi, cnt)


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, st.integers(8, 80), elements=st.floats(-100, 100)), st.integers(0, 7))
def test_hampel_never_rejects_before_its_window_is_full_and_rejects_huge_spikes(
    values: np.ndarray, where: int
) -> None:
    c = chain({"type": "hampel", "window": 7, "k": 3.0, "min_deviation": 1.0})
    spiked = values.copy()
    at = 7 + where % (values.shape[0] - 7) if values.shape[0] > 7 else None
    if at is not None:
        spiked[at] = 1e6
    out = run_series(c, spiked)
    kept = set(((out.ts - T0) // NS).tolist())
    assert set(range(7)) <= kept
    if at is not None:
        assert at not in kept
