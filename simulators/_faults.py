"""Faults on demand: compiled from :class:`~simulators.FaultSpec` onto the city's arrays.

::

    FaultSpec (scenario file or inject())  ──compile──▶  _Compiled (rows per kind, gateways)
                                                              │  each step, if active:
    Frame (truth) ──▶ FaultPlan.apply ──▶ Frame (what the sensors say)
                        stuck        hold every field at the value seen when it started
                        spike        multiply one field by ``factor`` (chance per reading)
                        dropout      drop the reading (chance per reading)
                        clock_drift  timestamps run ahead by ``ppm`` since the start
    FaultPlan.leak_m3h(t)       ──▶ City.leak_m3h   (extra flow: the leak is real water)
    FaultPlan.gateways_down(t)  ──▶ fleet: uplink lost / rebooting, per gateway
    FaultPlan.hostile(t)        ──▶ fleet: gateways sending hostile messages (simulators._hostile)
    FaultPlan.devices_with(t)   ──▶ device mode: serial noise, CRC errors on the ptys

Draws use their own generator seeded by the scenario, so faults are reproducible too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

from simulators._city import Frame
from simulators._errors import ScenarioError
from simulators._layout import Layout
from simulators._scenario import GATEWAY_FAULTS, DeviceKind, FaultSpec

__all__ = ["ActiveFault", "FaultPlan"]

_VALUE_FAULTS: Final = frozenset({"stuck", "spike", "dropout", "clock_drift"})


@dataclass(slots=True)
class _Compiled:
    spec: FaultSpec
    start_ns: int
    end_ns: float
    #: rows of each kind the fault acts on (value faults, leak)
    rows: dict[DeviceKind, npt.NDArray[np.int64]] = field(default_factory=dict)
    #: sensors of each kind (leak, device-mode faults)
    sensors: dict[DeviceKind, npt.NDArray[np.int64]] = field(default_factory=dict)
    gateways: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    held: dict[DeviceKind, dict[str, npt.NDArray[np.generic]]] = field(default_factory=dict)
    held_strings: dict[DeviceKind, dict[str, list[str]]] = field(default_factory=dict)

    def active(self, t_ns: int) -> bool:
        return self.start_ns <= t_ns < self.end_ns


@dataclass(frozen=True, slots=True)
class ActiveFault:
    """A fault as reported to callers: what, since when, until when, on whom."""

    type: str
    start_ns: int
    end_ns: int | None
    gateways: tuple[str, ...]
    devices: tuple[str, ...]


class FaultPlan:
    """The faults of a run, compiled against a city layout."""

    def __init__(self, layout: Layout, *, start_ns: int, seed: int) -> None:
        self.layout = layout
        self.start_ns = start_ns
        self._rng = np.random.default_rng([seed, 0xFA17])
        self._faults: list[_Compiled] = []
        self._gw_index = {g: i for i, g in enumerate(layout.gateway_ids)}
        self._dev_index: dict[str, tuple[DeviceKind, int]] = {}
        for kind, k in layout.kinds.items():
            for i, d in enumerate(k.device_ids):
                self._dev_index[d] = (kind, i)

    def __len__(self) -> int:
        return len(self._faults)

    def add(self, spec: FaultSpec, *, origin_ns: int | None = None) -> ActiveFault:
        """Compile ``spec``; ``at_s`` counts from ``origin_ns`` (default: the scenario start)."""
        origin = self.start_ns if origin_ns is None else origin_ns
        start = origin + round(spec.at_s * 1e9)
        end = math.inf if spec.duration_s is None else start + round(spec.duration_s * 1e9)
        c = _Compiled(spec=spec, start_ns=start, end_ns=end)
        if spec.type in GATEWAY_FAULTS:
            c.gateways = self._pick_gateways(spec)
        else:
            c.sensors = self._pick_sensors(spec)
            for kind, sensors in c.sensors.items():
                k = self.layout.kinds[kind]
                c.rows[kind] = np.flatnonzero(np.isin(k.row_sensor, sensors)).astype(np.int64)
        self._faults.append(c)
        return self._describe(c)

    def _pick_gateways(self, spec: FaultSpec) -> npt.NDArray[np.int64]:
        chosen: set[int] = set()
        for g in spec.gateways:
            if g not in self._gw_index:
                raise ScenarioError(f"unknown gateway {g!r}", key="faults.gateways")
            chosen.add(self._gw_index[g])
        n = self.layout.gateways
        extra = spec.count or (round(spec.fraction * n) if spec.fraction else 0)
        if extra:
            pool = np.array(sorted(set(range(n)) - chosen), dtype=np.int64)
            chosen.update(self._rng.choice(pool, min(extra, len(pool)), replace=False).tolist())
        return np.array(sorted(chosen), dtype=np.int64)

    def _pick_sensors(self, spec: FaultSpec) -> dict[DeviceKind, npt.NDArray[np.int64]]:
        kinds: list[DeviceKind] = list(spec.kinds) or list(self.layout.kinds)
        if spec.type == "leak":
            kinds = ["water"]
        chosen: dict[DeviceKind, set[int]] = {k: set() for k in self.layout.kinds}
        for d in spec.devices:
            if d not in self._dev_index:
                raise ScenarioError(f"unknown device {d!r}", key="faults.devices")
            kind, i = self._dev_index[d]
            chosen[kind].add(i)
        for g in spec.gateways:
            if g not in self._gw_index:
                raise ScenarioError(f"unknown gateway {g!r}", key="faults.gateways")
            gi = self._gw_index[g]
            for kind in kinds:
                if kind in self.layout.kinds:
                    sg = self.layout.kinds[kind].sensor_gateway
                    chosen[kind].update(np.flatnonzero(sg == gi).tolist())
        present = [k for k in kinds if k in self.layout.kinds]
        total = sum(self.layout.kinds[k].sensors for k in present)
        extra = spec.count or (round(spec.fraction * total) if spec.fraction else 0)
        if extra and present:
            offsets = np.cumsum([0] + [self.layout.kinds[k].sensors for k in present])
            picks = self._rng.choice(total, min(extra, total), replace=False)
            for p in picks.tolist():
                ki = int(np.searchsorted(offsets, p, side="right") - 1)
                chosen[present[ki]].add(p - int(offsets[ki]))
        return {k: np.array(sorted(v), dtype=np.int64) for k, v in chosen.items() if v}

    def _describe(self, c: _Compiled) -> ActiveFault:
        devices: list[str] = []
        for kind, sensors in c.sensors.items():
            ids = self.layout.kinds[kind].device_ids
            devices += [ids[i] for i in sensors.tolist()]
        return ActiveFault(
            type=c.spec.type,
            start_ns=c.start_ns,
            end_ns=None if math.isinf(c.end_ns) else int(c.end_ns),
            gateways=tuple(self.layout.gateway_ids[i] for i in c.gateways.tolist()),
            devices=tuple(devices),
        )

    def faults(self) -> list[ActiveFault]:
        return [self._describe(c) for c in self._faults]

    # -- per step -------------------------------------------------------------------------

    def leak_m3h(self, t_ns: int) -> npt.NDArray[np.float64]:
        """Extra flow per water meter from the leaks active at ``t_ns``."""
        k = self.layout.kinds.get("water")
        out = np.zeros(0 if k is None else k.sensors)
        for c in self._faults:
            if c.spec.type == "leak" and c.active(t_ns) and "water" in c.sensors:
                out[c.sensors["water"]] += c.spec.rate_m3h
        return out

    def gateways_down(self, t_ns: int) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
        """(uplink lost, rebooting) per gateway at ``t_ns``."""
        n = self.layout.gateways
        lost = np.zeros(n, dtype=np.bool_)
        rebooting = np.zeros(n, dtype=np.bool_)
        for c in self._faults:
            if c.spec.type in ("uplink_loss", "reboot") and c.active(t_ns):
                (lost if c.spec.type == "uplink_loss" else rebooting)[c.gateways] = True
        return lost, rebooting

    def hostile_faults(self, t_ns: int) -> list[tuple[npt.NDArray[np.int64], FaultSpec]]:
        """(gateways, spec) of every ``hostile`` fault active at ``t_ns``."""
        return [
            (c.gateways, c.spec)
            for c in self._faults
            if c.spec.type == "hostile" and c.active(t_ns)
        ]

    def hostile(self, t_ns: int) -> npt.NDArray[np.bool_]:
        """Gateways under an active ``hostile`` fault at ``t_ns``."""
        out = np.zeros(self.layout.gateways, dtype=np.bool_)
        for c in self._faults:
            if c.spec.type == "hostile" and c.active(t_ns):
                out[c.gateways] = True
        return out

    def devices_with(self, fault_type: str, t_ns: int) -> list[tuple[str, FaultSpec]]:
        """Device ids under an active fault of ``fault_type`` (device-mode faults)."""
        out: list[tuple[str, FaultSpec]] = []
        for c in self._faults:
            if c.spec.type == fault_type and c.active(t_ns):
                for kind, sensors in c.sensors.items():
                    ids = self.layout.kinds[kind].device_ids
                    out += [(ids[i], c.spec) for i in sensors.tolist()]
        return out

    def apply(self, frame: Frame) -> Frame:
        """Turn the truth into what faulty sensors report (in place; returns ``frame``)."""
        t = frame.t_ns
        for c in self._faults:
            if c.spec.type not in _VALUE_FAULTS:
                continue
            if not c.active(t):
                if c.held and t >= c.end_ns:
                    c.held.clear()
                    c.held_strings.clear()
                continue
            for kind, rows in c.rows.items():
                kf = frame.kinds.get(kind)
                if kf is None or len(rows) == 0:
                    continue
                spec = c.spec
                if spec.type == "stuck":
                    if kind not in c.held:
                        c.held[kind] = {n: v[rows].copy() for n, v in kf.values.items()}
                        c.held_strings[kind] = {
                            n: [v[i] for i in rows.tolist()] for n, v in kf.strings.items()
                        }
                    for n, v in kf.values.items():
                        v[rows] = c.held[kind][n]
                    for n, sv in kf.strings.items():
                        for i, s in zip(rows.tolist(), c.held_strings[kind][n], strict=True):
                            sv[i] = s
                elif spec.type == "spike":
                    name = spec.field or kf.layout.spec.primary
                    if name not in kf.values:
                        raise ScenarioError(
                            f"{kind} has no numeric field {name!r}", key="faults.field"
                        )
                    hit = rows[self._rng.random(len(rows)) < spec.probability]
                    values = kf.values[name]
                    values[hit] = values[hit] * spec.factor
                elif spec.type == "dropout":
                    hit = rows[self._rng.random(len(rows)) < spec.probability]
                    kf.valid[hit] = False
                elif spec.type == "clock_drift":
                    kf.ts[rows] += int((t - c.start_ns) * spec.ppm * 1e-6)
        return frame
