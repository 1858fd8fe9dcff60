"""``simulated``: sine waves with noise, for bench tests and demos without hardware."""

# ruff: noqa: RUF012 - pydantic copies mutable defaults per instance; ruff cannot see that
# FrozenModel (edge_agent._model) is a pydantic BaseModel.
from __future__ import annotations

import asyncio
import math
import random
import time
from typing import Annotated, Literal

from pydantic import Field

from edge_agent._model import FrozenModel, Id, Name
from edge_agent.inputs._base import Input, Sink
from telemetry import Reading

__all__ = ["SimulatedInput", "SimulatedInputConfig"]


class SimulatedInputConfig(FrozenModel):
    """Synthetic readings (sine + noise) for bench tests and demos without hardware."""

    type: Literal["simulated"]
    name: Id
    devices: Annotated[int, Field(ge=1)] = 1
    device_prefix: str = "sim"
    measurement: Name = "Simulated"
    fields: Annotated[list[Name], Field(min_length=1)] = ["value"]
    rate_hz: Annotated[float, Field(gt=0)] = 1.0


class SimulatedInput(Input):
    """Sine waves with noise for ``devices`` devices at ``rate_hz`` each (bench and demo)."""

    def __init__(self, cfg: SimulatedInputConfig, *, gateway: str) -> None:
        super().__init__(cfg.name)
        self.cfg = cfg
        self.devices = [f"{cfg.device_prefix}-{i}" for i in range(cfg.devices)]

    async def run(self, sink: Sink) -> None:
        self.state = "up"
        period = 1.0 / self.cfg.rate_hz
        rng = random.Random(self.name)
        next_t = time.monotonic()
        while True:
            ts = time.time_ns()
            phase = ts / 1e9 / 60.0
            readings = [
                Reading(
                    device=d,
                    measurement=self.cfg.measurement,
                    ts=ts,
                    fields={
                        f: 10.0 * math.sin(phase + i + j) + rng.gauss(0.0, 0.1)
                        for j, f in enumerate(self.cfg.fields)
                    },
                    clock="gateway",
                )
                for i, d in enumerate(self.devices)
            ]
            sink.submit(readings, None)
            next_t += period
            await asyncio.sleep(max(0.0, next_t - time.monotonic()))
