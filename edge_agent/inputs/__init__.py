"""Input plugins: where readings come from.

:data:`INPUTS` maps a config ``type`` to its typed config model and its factory; the config
union (:data:`InputSpec`) and :func:`build_input` derive from it. The interface an input
implements (:class:`Input`) and the :class:`Sink` it feeds are in ``_base``; one module per
input family: ``_mqtt`` (local broker), ``_simulated``, ``_bridge`` (firmware, NMEA, Modbus).
"""

from edge_agent.inputs._base import Input, InputConfig, InputFactory, Sink
from edge_agent.inputs._bridge import (
    FirmwareInput,
    FirmwareInputConfig,
    ModbusInput,
    ModbusInputConfig,
    ModbusTcp,
    NmeaInput,
    NmeaInputConfig,
    SerialLine,
    check_serial_url,
    is_shipped_map_name,
)
from edge_agent.inputs._mqtt import MqttInput, MqttInputConfig, MqttSubscription
from edge_agent.inputs._registry import INPUTS, InputPlugin, InputSpec, build_input, check_inputs
from edge_agent.inputs._simulated import SimulatedInput, SimulatedInputConfig

__all__ = [
    "INPUTS",
    "FirmwareInput",
    "FirmwareInputConfig",
    "Input",
    "InputConfig",
    "InputFactory",
    "InputPlugin",
    "InputSpec",
    "ModbusInput",
    "ModbusInputConfig",
    "ModbusTcp",
    "MqttInput",
    "MqttInputConfig",
    "MqttSubscription",
    "NmeaInput",
    "NmeaInputConfig",
    "SerialLine",
    "SimulatedInput",
    "SimulatedInputConfig",
    "Sink",
    "build_input",
    "check_inputs",
    "check_serial_url",
    "is_shipped_map_name",
]
