"""Each injected fault is visible in the emitted data, and only where and when it was asked."""

from __future__ import annotations

from typing import Any

import pytest
import sim_helpers as h

TICK = 60  # seconds per step in the test city
AIR = ("air-00001", "AirQualityObserved", "")


def _pair(fault: dict[str, Any], n: int = 8) -> tuple[list[Any], list[Any]]:
    """Readings per step with the fault, and from the same city without it."""
    return h.ticks(h.fleet(h.scenario(faults=[fault])), n), h.ticks(h.fleet(h.scenario()), n)


def test_spike_multiplies_the_field_during_the_window_only() -> None:
    faulty, truth = _pair(
        {
            "type": "spike",
            "devices": [AIR[0]],
            "at_s": 3 * TICK,
            "duration_s": 2 * TICK,
            "factor": 10,
        }
    )
    for i, (a, b) in enumerate(zip(faulty, truth, strict=True)):
        got, want = a[AIR].fields["pm25"], b[AIR].fields["pm25"]
        if i in (3, 4):
            assert got == pytest.approx(10 * want, abs=0.1)
        else:
            assert got == want
        assert a[AIR].fields["no2"] == b[AIR].fields["no2"]  # other fields untouched
    other = ("air-00002", "AirQualityObserved", "")
    assert [s[other] for s in faulty] == [s[other] for s in truth]


def test_stuck_sensor_repeats_itself_then_recovers() -> None:
    loop = "loop-00004"
    faulty, truth = _pair(
        {"type": "stuck", "devices": [loop], "at_s": 2 * TICK, "duration_s": 4 * TICK}
    )
    keys = [k for k in truth[0] if k[0] == loop]
    assert keys
    for key in keys:
        held = faulty[2][key].fields
        assert held == truth[2][key].fields
        for i in (3, 4, 5):
            assert faulty[i][key].fields == held  # frozen ...
            assert faulty[i][key].ts == truth[i][key].ts  # ... though still reporting on time
        assert any(truth[i][key].fields != held for i in (3, 4, 5))
        for i in (6, 7):
            assert faulty[i][key].fields == truth[i][key].fields


def test_dropout_removes_readings_and_the_ledger_counts_what_was_sent() -> None:
    f = h.fleet(
        h.scenario(
            faults=[
                {
                    "type": "dropout",
                    "kinds": ["noise"],
                    "count": 3,
                    "at_s": TICK,
                    "duration_s": 3 * TICK,
                }
            ]
        )
    )
    truth = h.ticks(h.fleet(h.scenario()), 6)
    seen = []
    for _ in range(6):
        batches = f.step()
        f.spool_batches(batches)
        seen.append(sum(len(b.readings) for b in batches))
    expected = [len(s) for s in truth]
    assert [e - s for e, s in zip(expected, seen, strict=True)] == [0, 3, 3, 3, 0, 0]
    assert f.ledger.created_readings == sum(seen)
    victims = {d for fault in f.faults() for d in fault.devices}
    assert len(victims) == 3
    assert all(v.startswith("noise-") for v in victims)


def test_clock_drift_pushes_timestamps_ahead_linearly() -> None:
    dev = "energy-00002"
    faulty, truth = _pair({"type": "clock_drift", "devices": [dev], "at_s": TICK, "ppm": 50_000})
    key = (dev, "ThreePhaseAcMeasurement", "")
    offsets = [a[key].ts - b[key].ts for a, b in zip(faulty, truth, strict=True)]
    assert offsets[:2] == [0, 0]
    step_ns = int(TICK * 1e9 * 50_000e-6)
    assert offsets[2:] == [k * step_ns for k in range(1, len(offsets) - 1)]
    other = ("energy-00001", "ThreePhaseAcMeasurement", "")
    assert all(a[other].ts == b[other].ts for a, b in zip(faulty, truth, strict=True))


def test_rebooting_gateway_sends_nothing_while_down_and_keeps_its_seq() -> None:
    f = h.fleet(
        h.scenario(
            faults=[
                {
                    "type": "reboot",
                    "gateways": ["cab-0002"],
                    "at_s": 2 * TICK,
                    "duration_s": 2 * TICK,
                }
            ]
        )
    )
    per_step = []
    for _ in range(6):
        batches = f.step()
        f.spool_batches(batches)
        per_step.append({f.layout.gateway_ids[b.gateway] for b in batches})
    assert ["cab-0002" in s for s in per_step] == [True, True, False, False, True, True]
    rec = f.ledger.gateways()["cab-0002"]
    assert (rec.first_seq, rec.last_seq, rec.batches) == (0, 3, 4)


def test_faults_can_be_injected_while_running() -> None:
    f = h.fleet(h.scenario())
    h.ticks(f, 2)
    f.inject(h.FaultSpec(type="spike", devices=[AIR[0]], factor=100, duration_s=TICK))
    f._take_commands()  # what run() does each turn; here without a broker
    spiked = h.ticks(f, 2)
    truth = h.ticks(h.fleet(h.scenario()), 4)
    assert spiked[0][AIR].fields["pm25"] == pytest.approx(100 * truth[2][AIR].fields["pm25"], abs=1)
    assert spiked[1][AIR].fields["pm25"] == truth[3][AIR].fields["pm25"]
