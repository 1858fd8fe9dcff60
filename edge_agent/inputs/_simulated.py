"""``simulated``: sine waves with noise, for bench tests and demos without hardware.

Its sizes are bounded (a config, even a remote one, cannot ask for ``devices: 1e9``):
:data:`MAX_DEVICES` devices, :data:`~telemetry.MAX_FIELDS` fields, :data:`MAX_RATE_HZ` and
:data:`MAX_VALUES_PER_S` values a second in all. ``fail_after_s`` is fault injection: the
input raises after running that long, and the agent restarts it like any failed input.
"""

# ruff: noqa: RUF012 - pydantic copies mutable defaults per instance; ruff cannot see that
# FrozenModel (edge_agent._model) is a pydantic BaseModel.
from __future__ import annotations

import asyncio
import math
import random
import time
from typing import Annotated, Final, Literal, Self

from pydantic import Field, model_validator

from edge_agent._errors import InputError
from edge_agent._model import FrozenModel, Id, Name
from edge_agent.inputs._base import Input, Sink
from telemetry import MAX_FIELDS, Reading

__all__ = [
    "MAX_DEVICES",
    "MAX_RATE_HZ",
    "MAX_VALUES_PER_S",
    "SimulatedInput",
    "SimulatedInputConfig",
]

MAX_DEVICES: Final = 10_000
MAX_RATE_HZ: Final = 100.0
#: devices x fields x rate_hz, per simulated input.
MAX_VALUES_PER_S: Final = 100_000


class SimulatedInputConfig(FrozenModel):
    """Synthetic readings (sine + noise) for bench tests and demos without hardware."""

    type: Literal["simulated"]
    name: Id
    devices: Annotated[int, Field(ge=1, le=MAX_DEVICES)] = 1
    device_prefix: Annotated[str, Field(min_length=1, max_length=64)] = "sim"
    measurement: Name = "Simulated"
    fields: Annotated[list[Name], Field(min_length=1, max_length=MAX_FIELDS)] = ["value"]
    rate_hz: Annotated[float, Field(gt=0, le=MAX_RATE_HZ)] = 1.0
    #: Fault injection: raise after running this long (the agent restarts the input).
    fail_after_s: Annotated[float, Field(gt=0)] | None = None

    @model_validator(mode="after")
    def _load(self) -> Self:
        values = self.devices * len(self.fields) * self.rate_hz
        if values > MAX_VALUES_PER_S:
            raise ValueError(
                f"devices x fields x rate_hz is {values:g} values/s, more than "
                f"{MAX_VALUES_PER_S} per simulated input"
            )
        return self


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
        next_t = started = time.monotonic()
        fail_at = None if self.cfg.fail_after_s is None else started + self.cfg.fail_after_s
        while True:
            if fail_at is not None and time.monotonic() >= fail_at:
                raise InputError(f"input {self.name}: fail_after_s reached (fault injection)")
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
