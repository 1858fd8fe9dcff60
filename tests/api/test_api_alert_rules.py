"""The shipped alert rules do not flap over the simulator's rush hour, and databases made by
earlier releases get them at start-up (unless someone edited the rule)."""

from __future__ import annotations

import collections
import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

from api import Database
from api.state import Alert, AlertEngine, AlertTransition, Inventory, Latest, Rule
from api.storage import AlertRule
from api.storage._shipped_rules import DEFAULT_RULES
from simulators import load_scenario
from simulators._city import City

#: The weekday morning peak of the simulator's traffic profile (08:00 local).
RUSH = (7.0, 9.5)


def _rules(extra: list[tuple[float, float]]) -> list[Rule]:
    """The shipped rules, plus congestion rules (ratio, duration) to compare against."""
    rules = [Rule(id=i + 1, name=str(r["name"]), kind=str(r["kind"]),
                  measurement=r.get("measurement"),  # type: ignore[arg-type]
                  field=r.get("field"), op=r.get("op"),  # type: ignore[arg-type]
                  threshold=r.get("threshold"), ratio=r.get("ratio"),  # type: ignore[arg-type]
                  duration_s=float(r["duration_s"]),  # type: ignore[arg-type]
                  severity=str(r["severity"]), enabled=True)
             for i, r in enumerate(DEFAULT_RULES)]
    for j, (ratio, duration) in enumerate(extra):
        rules.append(Rule(id=100 + j, name=f"under {ratio} for {duration} s", kind="congestion",
                          measurement="TrafficFlowObserved", field="averageVehicleSpeed",
                          op=None, threshold=None, ratio=ratio, duration_s=duration,
                          severity="warning", enabled=True))
    return rules


def _rush_hour(rules: list[Rule]) -> dict[int, collections.Counter[str]]:
    """Replay the demo city's loop detectors over the morning rush hour through the alert
    engine; per rule, how many times each subject was raised."""
    scenario = load_scenario("city")
    city = City(scenario)
    loops = city.layout.kinds["loop"]
    link = np.asarray(loops.attrs["link"], dtype=np.int64)
    inventory = Inventory()
    for sensor, device in enumerate(loops.device_ids):
        state = inventory.device(f"gw{int(loops.sensor_gateway[sensor])}", device)
        # As the fleet's births announce it (simulators/fleet/_births.py).
        free = float(city.layout.roads.link_free_speed[link[sensor]])
        state.meta = {"freeFlowSpeed": f"{free:g}"}
    raised: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)

    def on_change(transition: AlertTransition, alert: Alert) -> None:
        if transition == "raised":
            raised[alert.rule_id][f"{alert.gateway}/{alert.device}"] += 1

    # No hold (alert_min_hold_s): the rules' durations alone must keep the alerts steady.
    engine = AlertEngine(inventory=inventory, free_flow_kmh=50.0, on_change=on_change,
                         min_hold_s=0.0)
    engine.set_rules(rules)
    start = dt.datetime(2024, 11, 27, tzinfo=ZoneInfo(scenario.city.timezone))  # a Wednesday
    t0 = int((start + dt.timedelta(hours=RUSH[0])).timestamp() * 1e9)
    step_s = scenario.interval_s("loop")
    gateways = [f"gw{int(g)}" for g in loops.row_gateway]
    devices = [loops.device_ids[s] for s in loops.row_sensor]
    for i in range(int((RUSH[1] - RUSH[0]) * 3600 / step_s)):
        t = t0 + int(i * step_s * 1e9)
        speeds = city.step(t, frozenset({"loop"})).kinds["loop"].values["averageVehicleSpeed"]
        for row, speed in enumerate(speeds.tolist()):
            engine.on_reading(Latest(
                gateway=gateways[row], device=devices[row], measurement="TrafficFlowObserved",
                time="", ts_ns=t, fields={"averageVehicleSpeed": speed}, tags=loops.row_tags[row],
            ))
    return raised


def test_shipped_rules_do_not_flap_over_a_simulated_rush_hour() -> None:
    congestion = next(i + 1 for i, r in enumerate(DEFAULT_RULES) if r["kind"] == "congestion")
    shipped = next(r for r in DEFAULT_RULES if r["kind"] == "congestion")
    # Links hover around half their free-flow speed at the peak: the same limit held for
    # 0 s flaps there, which shows the replay reaches the conditions that make rules flap.
    raised = _rush_hour(_rules([(0.5, 0.0), (0.5, float(shipped["duration_s"]))]))  # type: ignore[arg-type]
    flapping = raised[100]
    assert max(flapping.values()) >= 10, flapping.most_common(3)
    # The shipped duration raises each link at most once over the rush hour, even at the
    # busier 50 % limit; the shipped 30 % rule the same.
    assert max(raised[101].values(), default=0) <= 1, raised[101].most_common(3)
    assert max(raised[congestion].values(), default=0) <= 1, raised[congestion].most_common(3)


def _old_database(path: Path, congestion: dict[str, object]) -> Database:
    db = Database(f"sqlite:///{path}")
    db.create_schema(seed_rules=False)
    with db.session() as s:
        s.add_all(AlertRule(**r) for r in DEFAULT_RULES if r["kind"] != "congestion")
        s.add(AlertRule(**congestion))
    return db


def test_an_old_database_gets_the_shipped_congestion_rule(tmp_path: Path) -> None:
    old = {"name": "Link speed under 30% of free flow", "kind": "congestion",
           "measurement": "TrafficFlowObserved", "field": "averageVehicleSpeed", "ratio": 0.3,
           "duration_s": 0.0, "severity": "warning"}
    db = _old_database(tmp_path / "old.sqlite3", old)
    db.create_schema()  # what every start does
    (rule,) = [r for r in db.list_rules() if r.kind == "congestion"]
    assert rule.duration_s == next(r for r in DEFAULT_RULES if r["kind"] == "congestion")[
        "duration_s"]
    assert rule.name.endswith("for 5 minutes")
    assert len(db.list_rules()) == 3
    db.dispose()


def test_an_edited_rule_is_left_alone(tmp_path: Path) -> None:
    edited = {"name": "Link speed under 30% of free flow", "kind": "congestion",
              "measurement": "TrafficFlowObserved", "field": "averageVehicleSpeed",
              "ratio": 0.3, "duration_s": 45.0, "severity": "critical"}
    db = _old_database(tmp_path / "edited.sqlite3", edited)
    db.create_schema()
    (rule,) = [r for r in db.list_rules() if r.kind == "congestion"]
    assert (rule.name, rule.duration_s, rule.severity) == (edited["name"], 45.0, "critical")
    db.dispose()
