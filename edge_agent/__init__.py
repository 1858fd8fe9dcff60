"""The edge agent: the gateway daemon (inputs → processors → spool → MQTT uplink).

- :func:`load_config` / :func:`parse_config` → :class:`AgentConfig` (typed, frozen);
- :class:`EdgeAgent` (``await agent.run()``, ``agent.stop()``, ``agent.snapshot()``) and
  :func:`run_agent`; :class:`AgentSnapshot`: the agent's state, as health and ``/metrics``
  show it;
- :class:`Spool`: the SQLite store-and-forward buffer; :class:`Uplink`: the MQTT output;
- :class:`ChannelPipeline`, :class:`Chain` and the stage plugins (:data:`STAGES`,
  :mod:`edge_agent.processors`);
- input plugins (:data:`INPUTS`, :mod:`edge_agent.inputs`): ``mqtt`` (local broker),
  ``simulated``, ``firmware``, ``nmea``, ``modbus``.

Errors derive from :class:`EdgeError` (hierarchy in :mod:`edge_agent._errors`).
"""

from edge_agent._agent import AGENT_NAME, EdgeAgent, run_agent
from edge_agent._batcher import Batcher
from edge_agent._commands import MAX_RESEND_SEQS, parse_resend_args
from edge_agent._config import (
    AgentConfig,
    BatchConfig,
    BrokerConfig,
    DeviceConfig,
    GatewayConfig,
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
    PayloadRejected,
    SpoolError,
    UplinkError,
)
from edge_agent._pipeline import ChannelPipeline
from edge_agent._snapshot import AgentSnapshot, CheckpointStats, UplinkSnapshot
from edge_agent._spool import Spool, SpooledBatch, SpoolStats
from edge_agent._uplink import Uplink
from edge_agent.inputs import (
    INPUTS,
    Input,
    InputPlugin,
    MqttInput,
    MqttInputConfig,
    MqttSubscription,
    SimulatedInput,
    Sink,
)
from edge_agent.processors import (
    STAGES,
    Chain,
    ChainOutput,
    ProcessorRule,
    StagePlugin,
    split_rounds,
)

__all__ = [
    "AGENT_NAME",
    "INPUTS",
    "MAX_RESEND_SEQS",
    "STAGES",
    "AgentConfig",
    "AgentSnapshot",
    "BatchConfig",
    "Batcher",
    "BrokerConfig",
    "Chain",
    "ChainOutput",
    "ChannelPipeline",
    "CheckpointStats",
    "CommandError",
    "ConfigError",
    "ConfigIssue",
    "DeviceConfig",
    "EdgeAgent",
    "EdgeError",
    "GatewayConfig",
    "Input",
    "InputError",
    "InputPlugin",
    "MqttInput",
    "MqttInputConfig",
    "MqttSubscription",
    "PayloadRejected",
    "ProcessorRule",
    "SimulatedInput",
    "Sink",
    "Spool",
    "SpoolConfig",
    "SpoolError",
    "SpoolStats",
    "SpooledBatch",
    "StagePlugin",
    "Uplink",
    "UplinkError",
    "UplinkSnapshot",
    "load_config",
    "parse_config",
    "parse_resend_args",
    "run_agent",
    "split_rounds",
]
