"""Remote config (``config/desired``): validated like the file, confined, persisted, reloaded.

A remote config comes from the API's engineer role or the API's broker user: a credential
that may leak. It may change what the gateway reads and how it filters (inputs' topics,
fields, devices, processors, batching, health), never where the gateway connects, what it
authenticates with or which local files and devices it opens. The file on the gateway stays
authoritative for those (:func:`remote_change_issues`)::

    fixed sections      broker (uplink: host, credentials, TLS), spool, metrics,
                        gateway.id, gateway.state_dir
    mqtt inputs         host, port, username, password, password_file, tls, allow_insecure:
                        those of the file's input of the same name (a new input: those of
                        one of the file's mqtt inputs, or the local default 127.0.0.1:1883
                        without credentials); client_id: the file's, or none for a new input
    serial links        serial.url / rtu.url: a URL one of the file's inputs uses
    modbus inputs       tcp host+port: a target one of the file's inputs uses; register_map:
                        a shipped map name, or a file path one of the file's inputs uses

File references (register maps, serial ports) are checked on the raw message *before* the
models validate it: validating a Modbus input reads its register-map file, and an error about
it would quote a local file into ``config/reported``. A refused config is reported with every
reason; the running config stays. An accepted one is written to
``<state_dir>/remote-config.json`` (fsync, atomic rename) before it is applied, so a restart
runs it again; a persisted one that no longer validates, or that the file now contradicts, is
ignored (logged) and the file config runs.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Final

from edge_agent._config import AgentConfig, parse_config
from edge_agent._errors import ConfigError, ConfigIssue
from edge_agent.inputs import (
    FirmwareInputConfig,
    InputConfig,
    ModbusInputConfig,
    MqttInputConfig,
    NmeaInputConfig,
    is_shipped_map_name,
)
from telemetry import ConfigDesired

__all__ = [
    "load_persisted",
    "persist",
    "remote_change_issues",
    "remote_file_ref_issues",
    "validate_remote",
]

log: Final = logging.getLogger("edge_agent")
_REMOTE_FILE: Final = "remote-config.json"


def _path(file_cfg: AgentConfig) -> Path:
    return file_cfg.gateway.state_dir / _REMOTE_FILE


def validate_remote(file_cfg: AgentConfig, data: dict[str, Any], version: int) -> AgentConfig:
    """The config of a ``config/desired`` message, or :class:`ConfigError` (file, key, why)."""
    source = f"remote config version {version}"
    issues = remote_file_ref_issues(file_cfg, data)
    if issues:
        raise ConfigError(source, issues)
    cfg = parse_config(data, source=source)
    issues = remote_change_issues(file_cfg, cfg)
    if issues:
        raise ConfigError(source, issues)
    return cfg


def persist(file_cfg: AgentConfig, desired: ConfigDesired) -> None:
    """Keep an accepted remote config for the next start (atomic replace, fsynced)."""
    path = _path(file_cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump({"version": desired.version, "config": desired.config}, f)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def load_persisted(file_cfg: AgentConfig) -> tuple[AgentConfig, int]:
    """The persisted remote config and its version, or the file's config and version 0."""
    path = _path(file_cfg)
    if not path.exists():
        return file_cfg, 0
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        version = int(stored["version"])
        issues = remote_file_ref_issues(file_cfg, stored["config"])
        if issues:
            raise ConfigError(str(path), issues)
        cfg = parse_config(stored["config"], source=str(path))
    except (OSError, ValueError, KeyError, TypeError, ConfigError) as exc:
        log.warning("persisted remote config ignored", extra={"reason": str(exc)})
        return file_cfg, 0
    issues = remote_change_issues(file_cfg, cfg)
    if issues:
        log.warning(
            "persisted remote config ignored: it changes what only the file may set",
            extra={"reason": "; ".join(map(str, issues))},
        )
        return file_cfg, 0
    return cfg, version


#: Sections a remote config cannot change: the uplink (its broker, credentials and TLS),
#: the spool, the metrics listener and the keys a release must be signed with.
_FIXED_SECTIONS: Final = ("broker", "spool", "metrics", "update")
_FILE_ONLY: Final = "cannot be changed remotely; only the config file on the gateway sets it"
#: What an mqtt input's connection is made of (its broker and how it gets in).
_MQTT_CONNECTION: Final = (
    "host", "port", "username", "password", "password_file", "tls", "allow_insecure",
)


def _serial_urls(inputs: list[InputConfig]) -> set[str]:
    urls = set()
    for spec in inputs:
        if isinstance(spec, FirmwareInputConfig | NmeaInputConfig):
            urls.add(spec.serial.url)
        elif isinstance(spec, ModbusInputConfig) and spec.rtu is not None:
            urls.add(spec.rtu.url)
    return urls


def _map_files(inputs: list[InputConfig]) -> set[str]:
    return {
        spec.register_map
        for spec in inputs
        if isinstance(spec, ModbusInputConfig) and not is_shipped_map_name(spec.register_map)
    }


def _ref_issues(
    i: int, refs: dict[str, object], urls: set[str], maps: set[str]
) -> list[ConfigIssue]:
    """``refs``: ``serial.url``/``rtu.url``/``register_map`` -> value, of input ``i``."""
    issues = []
    for key, value in refs.items():
        if key == "register_map":
            if isinstance(value, str) and not is_shipped_map_name(value) and value not in maps:
                issues.append(ConfigIssue(
                    f"inputs[{i}].register_map",
                    f"{_FILE_ONLY} (map files: those the file uses, or a shipped map name)",
                ))
        elif value is not None and value not in urls:
            issues.append(ConfigIssue(
                f"inputs[{i}].{key}", f"{_FILE_ONLY} (serial ports: those the file uses)"
            ))
    return issues


def remote_file_ref_issues(file_cfg: AgentConfig, data: object) -> list[ConfigIssue]:
    """Serial ports and register-map files of a raw remote config that the file does not
    use (checked before validation, which would open or stat them)."""
    raw = data.get("inputs") if isinstance(data, dict) else None
    if not isinstance(raw, list):
        return []
    urls, maps = _serial_urls(file_cfg.inputs), _map_files(file_cfg.inputs)
    issues = []
    for i, spec in enumerate(raw):
        if not isinstance(spec, dict):
            continue
        refs: dict[str, object] = {}
        for key in ("serial", "rtu"):
            line = spec.get(key)
            if isinstance(line, dict) and "url" in line:
                refs[f"{key}.url"] = line["url"]
        if spec.get("type") == "modbus":
            refs["register_map"] = spec.get("register_map")
        issues += _ref_issues(i, refs, urls, maps)
    return issues


def _input_issues(
    file_inputs: list[InputConfig], i: int, spec: InputConfig
) -> list[ConfigIssue]:
    same = next((f for f in file_inputs if f.name == spec.name and f.type == spec.type), None)
    where = f"inputs[{i}]"
    issues = []
    refs: dict[str, object] = {}
    if isinstance(spec, MqttInputConfig):
        if isinstance(same, MqttInputConfig):
            issues += [
                ConfigIssue(f"{where}.{key}", _FILE_ONLY)
                for key in (*_MQTT_CONNECTION, "client_id")
                if getattr(spec, key) != getattr(same, key)
            ]
        else:
            local = MqttInputConfig(type="mqtt", name=spec.name, subscriptions=spec.subscriptions)
            known = [local, *(f for f in file_inputs if isinstance(f, MqttInputConfig))]
            if not any(
                all(getattr(spec, key) == getattr(k, key) for key in _MQTT_CONNECTION)
                for k in known
            ):
                issues.append(ConfigIssue(
                    where,
                    f"{_FILE_ONLY}: a new mqtt input connects like one of the file's mqtt "
                    "inputs (host, port, credentials, tls, allow_insecure) or to the local "
                    "broker's default (127.0.0.1:1883, no credentials)",
                ))
            if spec.client_id is not None:
                issues.append(ConfigIssue(f"{where}.client_id", _FILE_ONLY))
    elif isinstance(spec, FirmwareInputConfig | NmeaInputConfig):
        refs["serial.url"] = spec.serial.url
    elif isinstance(spec, ModbusInputConfig):
        refs["register_map"] = spec.register_map
        if spec.rtu is not None:
            refs["rtu.url"] = spec.rtu.url
        targets = {
            (f.tcp.host, f.tcp.port)
            for f in file_inputs
            if isinstance(f, ModbusInputConfig) and f.tcp is not None
        }
        if spec.tcp is not None and (spec.tcp.host, spec.tcp.port) not in targets:
            issues.append(ConfigIssue(
                f"{where}.tcp", f"{_FILE_ONLY} (Modbus TCP targets: those the file uses)"
            ))
    # the raw check's rules again, typed (a persisted config: defence in depth)
    issues += _ref_issues(i, refs, _serial_urls(file_inputs), _map_files(file_inputs))
    return issues


def remote_change_issues(running: AgentConfig, desired: AgentConfig) -> list[ConfigIssue]:
    """Why ``desired`` cannot replace ``running`` (the file's config) remotely; empty when
    it can. See the module docstring for what is confined."""
    issues = [
        ConfigIssue(section, f"{_FILE_ONLY}; edit the file on the gateway")
        for section in _FIXED_SECTIONS
        if getattr(running, section) != getattr(desired, section)
    ]
    if running.gateway.id != desired.gateway.id:
        issues.append(ConfigIssue("gateway.id", _FILE_ONLY))
    if running.gateway.state_dir != desired.gateway.state_dir:
        issues.append(ConfigIssue("gateway.state_dir", _FILE_ONLY))
    file_inputs: list[InputConfig] = list(running.inputs)
    for i, spec in enumerate(desired.inputs):
        issues += _input_issues(file_inputs, i, spec)
    return issues
