"""The ``hostile`` fault: each case carries exactly the defect it names, and a hostile gateway
never enters the honest ledger (pure: no broker)."""

from __future__ import annotations

import json
import sys
import time

import pytest
import sim_helpers as h

from simulators import FaultSpec, FleetConfig, ScenarioError, hostile_messages
from simulators._hostile import NESTING_DEPTH, SEQ_JUMP
from telemetry import MAX_PAYLOAD_BYTES, MEASUREMENTS

GW = "hostile-0000"
SIM = 1_732_780_800_000_000_000


def _one(case: str) -> dict:  # type: ignore[type-arg]
    [m] = hostile_messages(GW, case, seq=1, sim_ns=SIM, wall_ns=time.time_ns())  # type: ignore[arg-type]
    return json.loads(m.payload)  # type: ignore[no-any-return]


def test_each_case_carries_its_defect() -> None:
    r = _one("field_type")["r"][0]
    assert MEASUREMENTS[r["m"]].fields["intensity"].type == "float"
    assert isinstance(r["f"]["intensity"], str)
    assert _one("reserved_measurement")["r"][0]["m"] == "ingest_batch"
    assert _one("future_timestamp")["r"][0]["t"] > time.time_ns() + 2 * 86_400 * 10**9
    route = _one("control_characters")["r"][0]["f"]["routeId"]
    assert route.endswith("\n")
    assert any(ord(c) < 0x20 and c != "\n" for c in route)
    [bad] = hostile_messages(GW, "bad_utf8", seq=1, sim_ns=SIM, wall_ns=0)
    with pytest.raises(UnicodeDecodeError):
        bad.payload.decode()
    assert bad.payload.count(b"\xff") == 1
    [deep] = hostile_messages(GW, "deep_nesting", seq=1, sim_ns=SIM, wall_ns=0)
    assert deep.payload.count(b"[") >= NESTING_DEPTH
    assert len(deep.payload) < MAX_PAYLOAD_BYTES
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(NESTING_DEPTH * 4)
    try:
        json.loads(deep.payload)  # well-formed, only deep
    finally:
        sys.setrecursionlimit(limit)
    [huge] = hostile_messages(GW, "huge_control", seq=1, sim_ns=SIM, wall_ns=0)
    assert MAX_PAYLOAD_BYTES - 16 < len(huge.payload) < MAX_PAYLOAD_BYTES
    assert set(huge.payload) == {1}
    jumps = hostile_messages(GW, "seq_jump", seq=1, sim_ns=SIM, wall_ns=0)
    assert [json.loads(m.payload)["seq"] for m in jumps] == [0, SEQ_JUMP]


def test_a_hostile_gateway_sends_no_honest_batches_and_is_never_in_the_ledger() -> None:
    sc = h.scenario(faults=[FaultSpec(type="hostile", gateways=["cab-0000"]).model_dump()])
    fleet = h.fleet(sc)
    for _ in range(3):
        fleet.spool_batches(fleet.step())
    ledger = fleet.ledger.gateways()
    assert "cab-0000" not in ledger
    assert "cab-0001" in ledger
    assert [f.gateways for f in fleet.faults()] == [("cab-0000",)]


def test_hostile_cases_can_be_chosen_and_belong_to_hostile_faults() -> None:
    spec = FaultSpec(type="hostile", gateways=["cab-0000"], hostile_cases=["seq_jump"])
    assert spec.hostile_cases == ["seq_jump"]
    with pytest.raises(ValueError, match="hostile_cases"):
        FaultSpec(type="reboot", gateways=["cab-0000"], hostile_cases=["seq_jump"])
    with pytest.raises(ValueError, match="hostile_cases"):
        FaultSpec(type="hostile", gateways=["cab-0000"], hostile_cases=["nonsense"])  # type: ignore[list-item]


def test_the_kept_batches_settings_are_checked() -> None:
    with pytest.raises(ScenarioError, match="keep_delivered_s"):
        FleetConfig(keep_delivered_s=-1)
    with pytest.raises(ScenarioError, match="keep_delivered_bytes"):
        FleetConfig(keep_delivered_bytes=-1)
