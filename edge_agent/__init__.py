"""The edge agent: the gateway daemon (inputs → processors → spool → MQTT uplink).

- :func:`load_config` / :func:`parse_config` → :class:`AgentConfig` (typed, frozen);
- :class:`EdgeAgent` (``await agent.run()``, ``agent.stop()``) and :func:`run_agent`;
- :class:`Spool`: the SQLite store-and-forward buffer; :class:`Uplink`: the MQTT output;
- :class:`ChannelPipeline`, :class:`Chain` and the stage plugins (:data:`STAGES`);
- input plugins (:data:`INPUTS`): ``mqtt`` (local broker), ``simulated``.

Errors derive from :class:`EdgeError` (hierarchy in :mod:`edge_agent._errors`).
"""

from edge_agent._agent import AGENT_NAME, EdgeAgent, run_agent
from edge_agent._config import (
    AgentConfig,
    BatchConfig,
    BrokerConfig,
    DeviceConfig,
    GatewayConfig,
    MqttInputConfig,
    MqttSubscription,
    ProcessorRule,
    SpoolConfig,
    load_config,
    parse_config,
)
from edge_agent._errors import (
    CommandError,
    ConfigError,
    ConfigIssue,
    EdgeError,
    InputError,
    SpoolError,
    UplinkError,
)
from edge_agent._inputs import INPUTS, Input, MqttInput, SimulatedInput, Sink
from edge_agent._pipeline import Batcher, ChannelPipeline
from edge_agent._processors import STAGES, Chain, ChainOutput, split_rounds
from edge_agent._spool import Spool, SpooledBatch, SpoolStats
from edge_agent._uplink import Uplink

__all__ = [
    "AGENT_NAME",
    "INPUTS",
    "STAGES",
    "AgentConfig",
    "BatchConfig",
    "Batcher",
    "BrokerConfig",
    "Chain",
    "ChainOutput",
    "ChannelPipeline",
    "CommandError",
    "ConfigError",
    "ConfigIssue",
    "DeviceConfig",
    "EdgeAgent",
    "EdgeError",
    "GatewayConfig",
    "Input",
    "InputError",
    "MqttInput",
    "MqttInputConfig",
    "MqttSubscription",
    "ProcessorRule",
    "SimulatedInput",
    "Sink",
    "Spool",
    "SpoolConfig",
    "SpoolError",
    "SpoolStats",
    "SpooledBatch",
    "Uplink",
    "UplinkError",
    "load_config",
    "parse_config",
    "run_agent",
    "split_rounds",
]
