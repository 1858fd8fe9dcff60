"""What a simulated gateway announces about itself: its birth (retained status) and its
health report. Pure: built from the layout and the gateway's state."""

from __future__ import annotations

import json
from typing import Final

import numpy as np

from simulators._city import Layout
from simulators.fleet._gateway import Gateway
from telemetry import Birth, DeviceInfo, Health, Location, SpoolHealth

__all__ = ["AGENT", "birth", "health"]

AGENT: Final = "smartcity-sim 0.1.0"


def _link_meta(layout: Layout, link: int) -> dict[str, str]:
    """What a loop detector announces about its road link: the API and the dashboard
    draw the link from ``geometry`` and rate congestion against ``freeFlowSpeed``."""
    roads = layout.roads
    ends = (int(roads.link_from[link]), int(roads.link_to[link]))
    geometry = [[round(float(roads.node_lat[n]), 6), round(float(roads.node_lon[n]), 6)]
                for n in ends]  # fmt: skip
    return {
        "geometry": json.dumps(geometry),
        "freeFlowSpeed": f"{float(roads.link_free_speed[link]):g}",
        "lanes": str(int(roads.link_lanes[link])),
    }


def birth(layout: Layout, index: int, ts: int) -> Birth:
    """The birth of gateway ``index``: its devices, where they are, what they measure."""
    devices: list[DeviceInfo] = []
    for k in layout.kinds.values():
        sensors = np.flatnonzero(k.sensor_gateway == index).tolist()
        units = {f.name: f.unit for f in k.spec.fields}
        links = k.attrs.get("link")
        for s in sensors:
            c = float(k.attrs["centrality"][s])
            devices.append(
                DeviceInfo(
                    id=k.device_ids[s],
                    kind=k.spec.device_kind,
                    measurements={k.spec.measurement: units},
                    location=Location(
                        lat=float(k.sensor_lat[s]),
                        lon=float(k.sensor_lon[s]),
                        area="centre" if c >= 0.6 else ("inner" if c >= 0.3 else "outer"),
                    ),
                    meta=_link_meta(layout, int(links[s])) if links is not None else {},
                )
            )
    return Birth(
        gw=layout.gateway_ids[index],
        ts=ts,
        agent=AGENT,
        location=Location(
            lat=float(layout.gateway_lat[index]),
            lon=float(layout.gateway_lon[index]),
            area=layout.gateway_area[index],
        ),
        devices=devices,
    )


def health(gw: Gateway, *, ts: int, uptime_s: float) -> Health:
    """The gateway's health report (its spool as the edge agent reports one)."""
    spool = gw.spool
    return Health(
        gw=gw.id,
        ts=ts,
        uptime_s=uptime_s,
        next_seq=gw.next_seq,
        spool=SpoolHealth(
            batches=len(spool),
            readings=sum(e.readings for e in spool.values()),
            bytes=sum(len(e.payload) for e in spool.values()),
            budget_bytes=0,
            oldest_age_s=None,
            dropped_batches=0,
            dropped_readings=0,
        ),
    )
