"""Processor rules (the ``processors:`` section): which channels a chain takes, and its stages."""

from __future__ import annotations

import fnmatch
from typing import Annotated, Self

from pydantic import Field, model_validator

from edge_agent._model import FrozenModel
from edge_agent.processors._aggregate import AggregateConfig
from edge_agent.processors._registry import StageSpec

__all__ = ["MatchConfig", "ProcessorRule"]


class MatchConfig(FrozenModel):
    """Which channels a rule takes (shell-style globs)."""

    device: str = "*"
    measurement: str = "*"
    field: str = "*"

    def matches(self, device: str, measurement: str, field: str) -> bool:
        return (
            fnmatch.fnmatchcase(device, self.device)
            and fnmatch.fnmatchcase(measurement, self.measurement)
            and fnmatch.fnmatchcase(field, self.field)
        )


class ProcessorRule(FrozenModel):
    match: MatchConfig = MatchConfig()
    stages: Annotated[list[StageSpec], Field(min_length=1)]

    @model_validator(mode="after")
    def _aggregate_last(self) -> Self:
        for i, st in enumerate(self.stages[:-1]):
            if isinstance(st, AggregateConfig):
                raise ValueError(f"aggregate (stage {i}) must be the last stage")
        return self
