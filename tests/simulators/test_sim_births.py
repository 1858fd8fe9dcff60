"""Births announce what the API and the dashboard need to draw and rate road links."""

from __future__ import annotations

import json

from simulators import FleetConfig, GatewayFleet, load_scenario
from telemetry import decode_status, encode_message


def test_loop_detectors_announce_their_link_geometry_and_free_flow_speed() -> None:
    fleet = GatewayFleet(FleetConfig(scenario=load_scenario("small")))
    roads = fleet.layout.roads
    loops = fleet.layout.kinds["loop"]
    seen = 0
    for index in range(len(fleet.gateway_ids)):
        birth = decode_status(encode_message(fleet.birth(index)))  # through the wire form
        for device in birth.devices:  # type: ignore[union-attr]
            if device.kind != loops.spec.device_kind:
                assert "geometry" not in device.meta
                continue
            seen += 1
            link = int(loops.attrs["link"][loops.device_ids.index(device.id)])
            geometry = json.loads(device.meta["geometry"])
            assert geometry == [
                [round(float(roads.node_lat[n]), 6), round(float(roads.node_lon[n]), 6)]
                for n in (int(roads.link_from[link]), int(roads.link_to[link]))
            ]
            assert float(device.meta["freeFlowSpeed"]) == float(roads.link_free_speed[link])
            assert int(device.meta["lanes"]) == int(roads.link_lanes[link])
    assert seen == len(loops.device_ids)
