"""The stage registry: config ``type`` -> (config model, implementation).

Everything else about stages derives from it: the config union :data:`StageSpec` that a
processor rule's ``stages`` validate against (a pydantic discriminated union on ``type``),
the implementation :class:`~edge_agent.processors.Chain` builds for a config, and the
discriminator tags the config error paths skip. A new stage is one module (its config and
implementation) and one line here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Final, NamedTuple, Union

from pydantic import Field

from edge_agent.processors._aggregate import AggregateConfig, AggregateStage
from edge_agent.processors._base import Stage, StageConfig
from edge_agent.processors._deadband import DeadbandConfig, DeadbandStage
from edge_agent.processors._ema import EmaConfig, EmaStage
from edge_agent.processors._hampel import HampelConfig, HampelStage
from edge_agent.processors._rate_limit import RateLimitConfig, RateLimitStage
from edge_agent.processors._scale import ScaleConfig, ScaleStage
from edge_agent.processors._validity import ValidityConfig, ValidityStage

__all__ = ["STAGES", "StagePlugin", "StageSpec", "build_stage"]


class StagePlugin(NamedTuple):
    """One stage type: its typed config and the implementation built from it."""

    config: type[StageConfig]
    stage: type[Stage] | type[AggregateStage]


#: Stage registry: config ``type`` -> (config model, implementation).
STAGES: Final[dict[str, StagePlugin]] = {
    "validity": StagePlugin(ValidityConfig, ValidityStage),
    "scale": StagePlugin(ScaleConfig, ScaleStage),
    "deadband": StagePlugin(DeadbandConfig, DeadbandStage),
    "hampel": StagePlugin(HampelConfig, HampelStage),
    "ema": StagePlugin(EmaConfig, EmaStage),
    "aggregate": StagePlugin(AggregateConfig, AggregateStage),
    "rate_limit": StagePlugin(RateLimitConfig, RateLimitStage),
}

if TYPE_CHECKING:
    StageSpec = StageConfig
else:
    #: A stage config as written in a rule: the registry's configs, told apart by ``type``.
    StageSpec = Annotated[
        Union[tuple(p.config for p in STAGES.values())],  # noqa: UP007 - built from the registry
        Field(discriminator="type"),
    ]


def build_stage(spec: StageConfig) -> Stage | AggregateStage:
    """The implementation of a stage config."""
    for cfg_type, impl in STAGES.values():
        if isinstance(spec, cfg_type):
            built: Stage | AggregateStage = impl(spec)  # type: ignore[arg-type,call-arg]
            return built
    raise TypeError(f"no stage for {type(spec).__name__}")
