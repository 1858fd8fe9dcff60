"""Simulated devices for the firmware bridge: the spec exercised from the device side.

- :class:`PtyPort`: the device end of a pty behind a stable symlink (plug/unplug);
- :class:`FirmwareDevice`: speaks the project firmware protocol;
- :class:`NmeaDevice`: a GPS receiver emitting RMC, VTG and GGA;
- :class:`ModbusMeterServer`: Modbus TCP meters serving the shipped register maps.
"""

from simulators.devices._firmware import (
    DEFAULT_CHANNELS,
    FirmwareDevice,
    FirmwareDeviceConfig,
    SentReadings,
)
from simulators.devices._modbus import ModbusMeterServer, meter_values
from simulators.devices._nmea import NmeaDevice, NmeaDeviceConfig, SentFix, format_sentence
from simulators.devices._pty import PtyPort

__all__ = [
    "DEFAULT_CHANNELS",
    "FirmwareDevice",
    "FirmwareDeviceConfig",
    "ModbusMeterServer",
    "NmeaDevice",
    "NmeaDeviceConfig",
    "PtyPort",
    "SentFix",
    "SentReadings",
    "format_sentence",
    "meter_values",
]
