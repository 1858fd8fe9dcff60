"""Per-channel processors, vectorised with numpy across channels.

A *channel* is one numeric field of one device: ``(device, measurement, tags, field)``.
Config rules (:class:`ProcessorRule`) map channels to a *chain* of stages
(:class:`Chain`); every channel that a rule matches shares the rule's parameters, and its
state lives in one row of the chain's numpy arrays.

Stages are plugins: :data:`STAGES` maps a config ``type`` to its typed config model and its
implementation (one module each: ``_validity``, ``_scale``, ``_deadband``, ``_hampel``,
``_ema``, ``_rate_limit``, ``_aggregate``); the config union :data:`StageSpec` derives from
it. Every stage counts what it dropped, per channel (``Stage.dropped``).

**State.** Everything a stage remembers about a channel lives in the per-row arrays named in
its ``state_arrays``; :meth:`Chain.state` returns them (rows ``[:n]``) and
:meth:`Chain.load_state` puts them back into a fresh chain, refusing arrays whose dtype or
shape does not fit (:class:`StateMismatch`). The agent checkpoints them into the spool.
"""

from edge_agent.processors._aggregate import AggregateConfig, AggregateFunction, AggregateStage
from edge_agent.processors._base import ChainOutput, Stage, StageConfig, StateMismatch
from edge_agent.processors._chain import Chain, split_rounds
from edge_agent.processors._deadband import DeadbandConfig, DeadbandStage
from edge_agent.processors._ema import EmaConfig, EmaStage
from edge_agent.processors._hampel import HampelConfig, HampelStage
from edge_agent.processors._rate_limit import RateLimitConfig, RateLimitStage
from edge_agent.processors._registry import STAGES, StagePlugin, StageSpec
from edge_agent.processors._rule import MatchConfig, ProcessorRule
from edge_agent.processors._scale import UNIT_CONVERSIONS, ScaleConfig, ScaleStage
from edge_agent.processors._validity import ValidityConfig, ValidityStage

__all__ = [
    "STAGES",
    "UNIT_CONVERSIONS",
    "AggregateConfig",
    "AggregateFunction",
    "AggregateStage",
    "Chain",
    "ChainOutput",
    "DeadbandConfig",
    "DeadbandStage",
    "EmaConfig",
    "EmaStage",
    "HampelConfig",
    "HampelStage",
    "MatchConfig",
    "ProcessorRule",
    "RateLimitConfig",
    "RateLimitStage",
    "ScaleConfig",
    "ScaleStage",
    "Stage",
    "StageConfig",
    "StagePlugin",
    "StageSpec",
    "StateMismatch",
    "ValidityConfig",
    "ValidityStage",
    "split_rounds",
]
