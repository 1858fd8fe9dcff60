"""telemetry.Intake: the same verdicts and lines as Conformer.conform_all + line_list."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry import Conformer, Intake, LineProtocolEncoder, Reading
from telemetry import _intake as intake_module
from tests.telemetry.strategies import names, readings

NOW = time.time_ns()
KNOWN = ["TrafficFlowObserved", "AirQualityObserved", "ingest_batch", "ingest_fake"]
# Readings from now - 1 h to now + 1 h: some past the 300 s clock-skew allowance.
near_now = st.integers(min_value=NOW - 3600 * 10**9, max_value=NOW + 3600 * 10**9)


def reference(
    conformer: Conformer, encoder: LineProtocolEncoder, gateway: str, rs: list[Reading]
) -> tuple[list[bytes], list[tuple[int, object]], int | None]:
    kept, refused = conformer.conform_all(rs, NOW, gateway=gateway)
    newest = max(r.ts for r in kept) if kept else None
    return encoder.line_list(gateway, kept), list(refused), newest


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["gw-a", "gw-b"]),
            st.lists(
                st.one_of(
                    readings(measurement=st.one_of(st.sampled_from(KNOWN), names)),
                    readings(measurement=st.sampled_from(KNOWN)),
                ),
                min_size=1, max_size=8,
            ),
            st.lists(near_now, min_size=8, max_size=8),
        ),
        min_size=1, max_size=6,
    ),
    st.sampled_from([None, 3, 50]),
)
def test_intake_matches_conform_all_then_line_list(
    calls: list[tuple[str, list[Reading], list[int]]], budget: int | None
) -> None:
    intake = Intake(max_clock_skew_s=300, max_series_per_gateway=budget)
    conformer = Conformer(max_clock_skew_s=300, max_series_per_gateway=budget)
    encoder = LineProtocolEncoder()
    # Each call twice: the second time every key is cached (the fast path).
    for gateway, rs, times in calls + calls:
        rs = [
            Reading(device=r.device, measurement=r.measurement, ts=t, fields=r.fields,
                    tags=r.tags, quality=r.quality, clock=r.clock)
            for r, t in zip(rs, times, strict=False)
        ]
        got = intake.encode(gateway, rs, NOW)
        lines, refused, newest = reference(conformer, encoder, gateway, rs)
        assert got.lines == lines
        assert got.refused == refused
        assert got.kept == len(lines)
        assert got.newest_ts == newest


def flow(device: str, ts: int, **fields: float | int | str) -> Reading:
    return Reading(device=device, measurement="TrafficFlowObserved", ts=ts,
                   fields=dict(fields) or {"intensity": 1.0}, tags={"lane": "1"})


def test_a_cached_shape_is_still_checked_for_time_strings_and_budget() -> None:
    intake = Intake(max_clock_skew_s=300, max_series_per_gateway=2)
    ok = intake.encode("gw", [flow("d1", NOW), flow("d2", NOW)], NOW)
    assert ok.kept == 2
    assert not ok.refused
    # Same shape, same series: cached; a future time is refused all the same.
    late = intake.encode("gw", [flow("d1", NOW + 3600 * 10**9), flow("d1", NOW - 1)], NOW)
    assert [why.reason for _, why in late.refused] == ["future_timestamp"]
    assert late.kept == 1
    assert late.newest_ts == NOW - 1
    # A third series is past the budget; known ones keep flowing.
    third = intake.encode("gw", [flow("d3", NOW), flow("d2", NOW)], NOW)
    assert [(i, why.reason) for i, why in third.refused] == [(0, "series_budget")]
    # String fields are checked per value, whatever was kept before.
    s = intake.encode("gw", [flow("d1", NOW, note="fine"), flow("d1", NOW, note="bad\x01")], NOW)
    assert [(i, why.reason) for i, why in s.refused] == [(1, "control_character")]
    assert s.lines == [
        b'TrafficFlowObserved,device=d1,gateway=gw,lane=1 note="fine",quality="good" '
        + str(NOW).encode()
    ]
    # An int in a float field is coerced (written without "i"), and not cached as sent.
    c = intake.encode("gw", [flow("d1", NOW, intensity=12), flow("d1", NOW, intensity=12)], NOW)
    assert c.kept == 2
    assert all(b"intensity=12.0," in line for line in c.lines), c.lines


def test_the_line_caches_stay_bounded_and_keep_giving_the_same_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(intake_module, "_MAX_LINES", 7)
    monkeypatch.setattr(intake_module, "_MAX_LINES_PER_GATEWAY", 3)
    intake = Intake(max_clock_skew_s=300, max_series_per_gateway=None)
    encoder = LineProtocolEncoder()
    for round_ in range(3):
        for g in range(4):
            gateway = f"gw-{g}"
            rs = [flow(f"d{d}", NOW - round_) for d in range(5)]
            assert intake.encode(gateway, rs, NOW).lines == encoder.line_list(gateway, rs)
            cached = [len(state.lines) for state in intake._gateways.values()]
            assert max(cached) <= 3
            assert sum(cached) <= 7
            assert intake._cached == sum(cached)


def test_a_reading_built_in_code_with_a_newline_is_refused_not_split_in_two() -> None:
    # Decoded readings never hold a newline (the contract refuses it); one built in code
    # and never checked may, in a measurement name. Written, its line would be two points.
    intake = Intake(max_clock_skew_s=300)
    odd = Reading(device="d1", measurement="Odd\nName", ts=NOW + 5, fields={"x": 1.0})
    late = flow("d1", NOW + 3600 * 10**9)  # refused before: indices stay the input's
    got = intake.encode("gw", [late, flow("d1", NOW), odd, flow("d2", NOW - 1)], NOW)
    assert [(i, why.reason) for i, why in got.refused] == [
        (0, "future_timestamp"), (2, "control_character")
    ]
    assert got.kept == 2
    assert got.newest_ts == NOW
    kept = [flow("d1", NOW), flow("d2", NOW - 1)]
    assert got.lines == LineProtocolEncoder().line_list("gw", kept)
    assert got.body == b"\n".join(got.lines) + b"\n"
    plain = intake.encode("gw", [flow("d1", NOW), flow("d2", NOW)], NOW)
    assert plain.body.count(b"\n") == 2
    assert plain.lines == LineProtocolEncoder().line_list("gw", [flow("d1", NOW), flow("d2", NOW)])
