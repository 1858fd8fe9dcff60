"""Frames to wire payloads: readings rendered straight to JSON from per-row templates.

Each row (one reading of one device) gets a ``%``-template once, at start-up, with its
device id, measurement and tags already in place::

    {"d":"loop-00012","m":"TrafficFlowObserved","t":%d,"f":{"intensity":%r,...},"g":{"lane":"1"}}

Per step only numbers are filled in (``%r`` of a Python float is the shortest round-trip
repr: valid JSON, always with a fraction or exponent, so float fields stay floats and int
fields stay ints as ``docs/wire-protocol.md`` requires). Rows are then grouped per gateway
and cut into batches of at most ``batch_max_readings``. ``tests/simulators`` checks every
payload with the contract's strict decoder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from simulators._city import Frame, KindFrame
from simulators._layout import Layout
from simulators._scenario import DeviceKind
from telemetry import MAX_PAYLOAD_BYTES, MAX_READINGS

__all__ = ["GatewayBatch", "WireEncoder"]

_SAFE_BYTES_PER_READING: Final = 400


@dataclass(frozen=True, slots=True)
class GatewayBatch:
    """Readings of one gateway from one step, ready to be numbered and spooled."""

    gateway: int
    readings: list[str]
    min_ts: int
    max_ts: int


class WireEncoder:
    """Renders frames into per-gateway lists of JSON readings."""

    def __init__(self, layout: Layout, *, batch_max_readings: int = 500) -> None:
        self.layout = layout
        limit = min(batch_max_readings, MAX_READINGS, MAX_PAYLOAD_BYTES // _SAFE_BYTES_PER_READING)
        self.batch_max_readings = max(1, limit)
        self._templates: dict[DeviceKind, list[str]] = {}
        for kind, k in layout.kinds.items():
            parts = []
            for f in k.spec.fields:
                slot = {"float": "%r", "int": "%d", "string": '"%s"'}[f.type]
                parts.append(f'"{f.name}":{slot}')
            fields = ",".join(parts)
            templates = []
            for row, sensor in enumerate(k.row_sensor.tolist()):
                tags = k.row_tags[row]
                tag_part = f',"g":{json.dumps(tags, separators=(",", ":"))}' if tags else ""
                templates.append(
                    f'{{"d":"{k.device_ids[sensor]}","m":"{k.spec.measurement}","t":%d,'
                    f'"f":{{{fields}}}{tag_part}}}'
                )
            self._templates[kind] = templates

    def render(
        self, kf: KindFrame
    ) -> tuple[list[str], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """(JSON readings, gateway per reading, ts per reading) of the valid rows of ``kf``."""
        layout = kf.layout
        idx = np.flatnonzero(kf.valid)
        templates = self._templates[layout.kind]
        if len(idx) == len(templates):
            chosen = templates
            take: npt.NDArray[np.int64] | slice = slice(None)
        else:
            chosen = [templates[i] for i in idx.tolist()]
            take = idx
        columns: list[list[object]] = [kf.ts[take].tolist()]
        for f in layout.spec.fields:
            if f.type == "string":
                strings = kf.strings[f.name]
                picked: list[object] = (
                    list(strings) if isinstance(take, slice) else [strings[i] for i in idx.tolist()]
                )
                columns.append(picked)
            elif f.type == "int":
                columns.append(np.asarray(kf.values[f.name][take], dtype=np.int64).tolist())
            else:
                columns.append(np.round(kf.values[f.name][take], f.decimals).tolist())
        rendered = [t % v for t, v in zip(chosen, zip(*columns, strict=True), strict=True)]
        gateways = layout.row_gateway[take]
        return (
            rendered,
            np.asarray(gateways, dtype=np.int64),
            np.asarray(kf.ts[take], dtype=np.int64),
        )

    def batches(
        self, frame: Frame, *, silent: npt.NDArray[np.bool_] | None = None
    ) -> list[GatewayBatch]:
        """Group a frame's readings per gateway; gateways flagged in ``silent`` send nothing."""
        texts: list[str] = []
        gws: list[npt.NDArray[np.int64]] = []
        tss: list[npt.NDArray[np.int64]] = []
        for kf in frame.kinds.values():
            r, g, t = self.render(kf)
            texts += r
            gws.append(g)
            tss.append(t)
        if not texts:
            return []
        gw = np.concatenate(gws)
        ts = np.concatenate(tss)
        order = np.argsort(gw, kind="stable")
        gw_sorted = gw[order]
        ts_sorted = ts[order]
        bounds = np.flatnonzero(np.diff(gw_sorted)) + 1
        starts = np.concatenate(([0], bounds)).tolist()
        ends = np.concatenate((bounds, [len(gw_sorted)])).tolist()
        ordered = [texts[i] for i in order.tolist()]
        out: list[GatewayBatch] = []
        step = self.batch_max_readings
        gw_list = gw_sorted.tolist()
        for a, b in zip(starts, ends, strict=True):
            g = gw_list[a]
            if silent is not None and silent[g]:
                continue
            for lo in range(a, b, step):
                hi = min(lo + step, b)
                seg = ts_sorted[lo:hi]
                out.append(GatewayBatch(g, ordered[lo:hi], int(seg.min()), int(seg.max())))
        return out


def batch_payload(gateway: str, seq: int, readings: list[str]) -> bytes:
    """The wire form of a batch (``docs/wire-protocol.md``)."""
    return f'{{"v":1,"gw":"{gateway}","seq":{seq},"r":[{",".join(readings)}]}}'.encode()
