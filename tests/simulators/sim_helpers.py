"""Shared helpers for the simulator tests (imported by file path: no package needed)."""

from __future__ import annotations

from typing import Any

from simulators import (
    FaultSpec,
    FleetConfig,
    GatewayFleet,
    Scenario,
    batch_payload,
    scenario_from_dict,
)
from telemetry import Reading, decode_batch

__all__ = ["FaultSpec", "batch_payload", "fleet", "scenario", "ticks"]

Key = tuple[str, str, str]  # device, measurement, lane


def scenario(**changes: Any) -> Scenario:
    """The small test city (every kind), with top-level keys replaced."""
    data: dict[str, Any] = {
        "name": "test",
        "seed": 7,
        "start": "2024-11-27T00:00:00+01:00",
        "tick_s": 60,
        "speed": 0,
        "city": {
            "grid": {"rows": 6, "cols": 6, "spacing_m": 350, "arterial_every": 2},
            "bus_routes": 2,
        },
        "intervals": dict.fromkeys(
            ("loop", "bus", "parking", "air", "noise", "water", "energy"), 60
        ),
        "gateways": [
            {"prefix": "cab", "count": 6, "devices": {"loop": 3, "air": 1, "noise": 1}},
            {"prefix": "bus", "count": 3, "devices": {"bus": 1}},
            {"prefix": "park", "count": 2, "devices": {"parking": 3}},
            {"prefix": "pump", "count": 1, "devices": {"water": 4}},
            {"prefix": "sub", "count": 2, "devices": {"energy": 3}},
        ],
    }
    data.update(changes)
    return scenario_from_dict(data)


def fleet(sc: Scenario) -> GatewayFleet:
    return GatewayFleet(FleetConfig(scenario=sc))


def ticks(f: GatewayFleet, n: int) -> list[dict[Key, Reading]]:
    """Run ``n`` steps without I/O; per step, every reading by (device, measurement, lane),
    each batch passed through the contract's strict decoder."""
    out = []
    for _ in range(n):
        step: dict[Key, Reading] = {}
        for b in f.step():
            gw = f.layout.gateway_ids[b.gateway]
            batch = decode_batch(batch_payload(gw, 0, b.readings))
            for r in batch.readings:
                step[(r.device, r.measurement, r.tags.get("lane", ""))] = r
        out.append(step)
    return out
