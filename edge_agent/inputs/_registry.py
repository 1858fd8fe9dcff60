"""The input registry: config ``type`` -> (config model, factory).

Everything else about input types derives from it: the config union :data:`InputSpec` that
``inputs:`` entries validate against (a pydantic discriminated union on ``type``),
:func:`build_input`, and the discriminator tags the config error paths skip. A new input is
one module (its config and implementation) and one line here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Annotated, Final, NamedTuple, Union

from pydantic import Field

from edge_agent._errors import InputError
from edge_agent.inputs._base import Input, InputConfig, InputFactory
from edge_agent.inputs._bridge import (
    FirmwareInput,
    FirmwareInputConfig,
    ModbusInput,
    ModbusInputConfig,
    NmeaInput,
    NmeaInputConfig,
    check_shared_lines,
)
from edge_agent.inputs._mqtt import MqttInput, MqttInputConfig
from edge_agent.inputs._simulated import SimulatedInput, SimulatedInputConfig

__all__ = ["INPUTS", "InputPlugin", "InputSpec", "build_input", "check_inputs"]


class InputPlugin(NamedTuple):
    """One input type: its typed config and what builds the input from it."""

    config: type[InputConfig]
    factory: InputFactory


#: Input registry: config ``type`` -> (config model, factory(config, gateway=...)).
INPUTS: Final[dict[str, InputPlugin]] = {
    "mqtt": InputPlugin(MqttInputConfig, MqttInput),
    "simulated": InputPlugin(SimulatedInputConfig, SimulatedInput),
    "firmware": InputPlugin(FirmwareInputConfig, FirmwareInput),
    "nmea": InputPlugin(NmeaInputConfig, NmeaInput),
    "modbus": InputPlugin(ModbusInputConfig, ModbusInput),
}

if TYPE_CHECKING:
    InputSpec = InputConfig
else:
    #: An ``inputs:`` entry: the registry's configs, told apart by ``type``.
    InputSpec = Annotated[
        Union[tuple(p.config for p in INPUTS.values())],  # noqa: UP007 - built from the registry
        Field(discriminator="type"),
    ]


def check_inputs(specs: Iterable[InputConfig]) -> None:
    """Rules across inputs (:class:`ValueError`): only Modbus meters share a serial port."""
    check_shared_lines(specs)


def build_input(cfg: InputConfig, *, gateway: str) -> Input:
    """The input a validated config describes."""
    plugin = INPUTS.get(cfg.type)
    if plugin is None:
        raise InputError(f"no input plugin of type {cfg.type!r}")
    return plugin.factory(cfg, gateway=gateway)
