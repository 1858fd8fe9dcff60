"""The city model: deterministic under a seed, shaped like a city, speaking the contract."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import sim_helpers as h

from simulators import (
    City,
    FaultSpec,
    FleetConfig,
    GatewayFleet,
    ScenarioError,
    load_scenario,
    packaged_scenarios,
)
from telemetry import MEASUREMENTS, decode_batch

HOUR_NS = 3600 * 10**9


def _day(city: City, step_min: int = 10) -> list[tuple[float, dict[str, dict[str, np.ndarray]]]]:
    start = city.scenario.start_ns()
    out = []
    for i in range(24 * 60 // step_min):
        frame = city.step(start + i * step_min * 60 * 10**9)
        out.append((frame.hour, {k: dict(v.values) for k, v in frame.kinds.items()}))
    return out


def test_same_seed_same_bytes_other_seed_other_data() -> None:
    sc = h.scenario(faults=[{"type": "spike", "kinds": ["air"], "count": 2, "probability": 0.5}])
    a, b = h.fleet(sc), h.fleet(sc)
    other = h.fleet(sc.with_overrides(seed=8))
    for _ in range(15):
        pa = [(x.gateway, x.readings) for x in a.step()]
        pb = [(x.gateway, x.readings) for x in b.step()]
        assert pa == pb
    assert [x.readings for x in other.step()] != [x.readings for x in a.step()]


def test_every_payload_passes_the_strict_decoder_with_stable_types() -> None:
    f = GatewayFleet(FleetConfig(scenario=h.scenario()))
    seen = set()
    for _ in range(3):
        for b in f.step():
            gw = f.layout.gateway_ids[b.gateway]
            batch = decode_batch(h.batch_payload(gw, 5, b.readings))
            assert batch.gateway == gw
            for r in batch.readings:
                spec = MEASUREMENTS[r.measurement]
                for name, value in r.fields.items():
                    declared = spec.fields[name].type
                    assert (
                        type(value).__name__
                        == {"float": "float", "int": "int", "string": "str"}[declared]
                    ), (r.measurement, name)
                seen.add(r.measurement)
    assert seen == {
        "TrafficFlowObserved",
        "Vehicle",
        "OffStreetParking",
        "AirQualityObserved",
        "NoiseLevelObserved",
        "WaterConsumptionObserved",
        "ThreePhaseAcMeasurement",
    }


def test_traffic_has_morning_and_evening_peaks() -> None:
    day = _day(City(h.scenario()))
    by_hour: dict[int, list[float]] = {}
    for hour, kinds in day:
        by_hour.setdefault(int(hour), []).append(float(np.mean(kinds["loop"]["intensity"])))
    flow = {hr: float(np.mean(v)) for hr, v in by_hour.items()}
    assert flow[8] > 1.5 * flow[11]
    assert flow[8] > 4 * flow[3]
    assert flow[16] > 1.3 * flow[13]
    assert flow[17] > 2 * flow[21]


def test_speed_falls_as_occupancy_rises() -> None:
    city = City(h.scenario())
    day = _day(city)
    loops = city.layout.kinds["loop"]
    free = city.layout.roads.link_free_speed[np.asarray(loops.attrs["link"])[loops.row_sensor]]
    occ = np.stack([k["loop"]["occupancy"] for _, k in day])  # (time, detector lane)
    speed = np.stack([k["loop"]["averageVehicleSpeed"] for _, k in day])
    # Each detector slows down as it fills up ...
    per_row = [np.corrcoef(occ[:, i], speed[:, i])[0, 1] for i in range(occ.shape[1])]
    assert np.median(per_row) < -0.8
    # ... and across the city, relative speed falls with occupancy, bin by bin.
    rel = (speed / free).ravel()
    o = occ.ravel()
    edges = np.quantile(o, [0, 0.2, 0.4, 0.6, 0.8, 1.0])
    means = [float(rel[(o >= lo) & (o <= hi)].mean()) for lo, hi in itertools.pairwise(edges)]
    assert all(a > b for a, b in itertools.pairwise(means)), means


def test_car_parks_in_the_centre_are_full_at_midday() -> None:
    sc = h.scenario(gateways=[{"prefix": "park", "count": 36, "devices": {"parking": 1}}])
    city = City(sc)
    central = np.asarray(city.layout.kinds["parking"].attrs["centrality"]) >= 0.6
    assert central.sum() >= 3
    day = _day(city)
    at = {int(hour * 60): k["parking"]["occupancy"] for hour, k in day}
    assert float(at[12 * 60][central].mean()) > 0.92
    assert float(at[3 * 60][central].mean()) < 0.3
    outer = ~central & (np.asarray(city.layout.kinds["parking"].attrs["centrality"]) < 0.3)
    if outer.any():  # residential areas do the opposite
        assert float(at[3 * 60][outer].mean()) > float(at[12 * 60][outer].mean())


def test_a_leak_raises_the_night_flow() -> None:
    sc = h.scenario()
    leaking = City(sc)
    plain = City(sc)
    start = sc.start_ns()
    night_plain, night_leak, day_plain = [], [], []
    for i in range(0, 24 * 6):
        t = start + i * 600 * 10**9
        leaking.leak_m3h = np.array([15.0, 0.0, 0.0, 0.0])
        a = plain.step(t).kinds["water"].values["flow"]
        b = leaking.step(t).kinds["water"].values["flow"]
        hour = i / 6
        if 2 <= hour < 4:
            night_plain.append(a[0])
            night_leak.append(b[0])
        if 7 <= hour < 8:
            day_plain.append(a[0])
        assert np.allclose(a[1:], b[1:])
    # Night flow is a fraction of the day's without the leak; the leak adds its rate on top.
    assert np.mean(night_plain) < 0.5 * np.mean(day_plain)
    assert np.mean(night_leak) == pytest.approx(np.mean(night_plain) + 15.0, rel=1e-6)


def test_a_leak_fault_reaches_the_meter() -> None:
    sc = h.scenario(
        faults=[{"type": "leak", "devices": ["water-00002"], "rate_m3h": 20, "at_s": 120}]
    )
    with_leak = h.ticks(h.fleet(sc), 4)
    without = h.ticks(h.fleet(h.scenario()), 4)
    key = ("water-00002", "WaterConsumptionObserved", "")
    assert with_leak[1][key].fields["flow"] == without[1][key].fields["flow"]
    assert with_leak[3][key].fields["flow"] == pytest.approx(
        without[3][key].fields["flow"] + 20, abs=0.002
    )


def test_buses_move_along_their_routes_with_plausible_fields() -> None:
    f = h.fleet(h.scenario())
    steps = h.ticks(f, 10)
    pos = [
        (
            s[("bus-00000", "Vehicle", "")].fields["latitude"],
            s[("bus-00000", "Vehicle", "")].fields["longitude"],
        )
        for s in steps
    ]
    assert len(set(pos)) >= 8
    roads = f.layout.roads
    for s in steps:
        r = s[("bus-00001", "Vehicle", "")]
        assert roads.node_lat.min() - 1e-4 <= r.fields["latitude"] <= roads.node_lat.max() + 1e-4
        assert 0 <= r.fields["heading"] < 360
        assert r.fields["speed"] >= 0
        assert str(r.fields["routeId"]).startswith("R")


def test_air_quality_follows_nearby_traffic() -> None:
    day = _day(City(h.scenario()))
    no2 = np.array([k["air"]["no2"].mean() for _, k in day])
    flow = np.array([k["loop"]["intensity"].mean() for _, k in day])
    assert np.corrcoef(no2, flow)[0, 1] > 0.7


def test_packaged_scenarios_load_and_size_as_documented() -> None:
    assert set(packaged_scenarios()) >= {"small", "city", "load-1000"}
    assert load_scenario("city").gateway_count >= 200
    load = load_scenario("load-1000")
    assert load.gateway_count >= 1000
    assert load.device_count() >= 10_000


def test_bad_scenarios_name_the_file_and_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ngateways:\n  - {prefix: cab, count: 0, devices: {loop: 1}}\n")
    with pytest.raises(ScenarioError) as info:
        load_scenario(bad)
    assert info.value.source == str(bad)
    assert info.value.key == "gateways[0].count"
    bad.write_text(
        "name: x\ntick_s: 7\nintervals: {loop: 10}\n"
        "gateways: [{prefix: a, count: 1, devices: {loop: 1}}]\n"
    )
    with pytest.raises(ScenarioError, match="multiple of tick_s"):
        load_scenario(bad)
    bad.write_text(
        "name: x\ngateways: [{prefix: a, count: 1, devices: {loop: 1}}]\nfaults: [{type: stuck}]\n"
    )
    with pytest.raises(ScenarioError, match="needs targets") as info:
        load_scenario(bad)
    assert info.value.key.startswith("faults[0]")
    with pytest.raises(ScenarioError, match="not a packaged scenario"):
        load_scenario(tmp_path / "missing.yaml")
    with pytest.raises(ScenarioError, match="unknown device"):
        h.fleet(h.scenario(faults=[FaultSpec(type="stuck", devices=["nope"]).model_dump()]))


def test_faster_than_real_time_is_just_bigger_steps() -> None:
    sc = h.scenario()
    f = h.fleet(sc)
    h.ticks(f, 3)
    assert f.sim_time_ns == sc.start_ns() + 3 * 60 * 10**9
