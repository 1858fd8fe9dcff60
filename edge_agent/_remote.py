"""Remote config (``config/desired``): validated like the file, persisted, reloaded at start.

A remote config is validated with the same models as the file and must keep the sections
that would cut the uplink or move the spool (:func:`remote_change_issues`). An accepted one
is written to ``<state_dir>/remote-config.json`` (fsync, atomic rename) before it is applied,
so a restart runs it again; a persisted one that no longer validates, or that the file's
fixed sections now contradict, is ignored (logged) and the file config runs.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Final

from edge_agent._config import AgentConfig, parse_config
from edge_agent._errors import ConfigError, ConfigIssue
from telemetry import ConfigDesired

__all__ = ["load_persisted", "persist", "remote_change_issues", "validate_remote"]

log: Final = logging.getLogger("edge_agent")
_REMOTE_FILE: Final = "remote-config.json"


def _path(file_cfg: AgentConfig) -> Path:
    return file_cfg.gateway.state_dir / _REMOTE_FILE


def validate_remote(file_cfg: AgentConfig, data: dict[str, Any], version: int) -> AgentConfig:
    """The config of a ``config/desired`` message, or :class:`ConfigError` (file, key, why)."""
    source = f"remote config version {version}"
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
        cfg = parse_config(stored["config"], source=str(path))
    except (OSError, ValueError, KeyError, TypeError, ConfigError) as exc:
        log.warning("persisted remote config ignored", extra={"reason": str(exc)})
        return file_cfg, 0
    if remote_change_issues(file_cfg, cfg):
        log.warning("persisted remote config ignored: it changes fixed sections")
        return file_cfg, 0
    return cfg, version


#: Sections a remote config cannot change: they would cut the uplink or move the spool.
_FIXED_SECTIONS: Final = ("broker", "spool", "metrics")


def remote_change_issues(running: AgentConfig, desired: AgentConfig) -> list[ConfigIssue]:
    """Why ``desired`` cannot replace ``running`` remotely (empty when it can)."""
    issues = [
        ConfigIssue(section, "cannot be changed remotely; edit the file on the gateway")
        for section in _FIXED_SECTIONS
        if getattr(running, section) != getattr(desired, section)
    ]
    if running.gateway.id != desired.gateway.id:
        issues.append(ConfigIssue("gateway.id", "cannot be changed remotely"))
    if running.gateway.state_dir != desired.gateway.state_dir:
        issues.append(ConfigIssue("gateway.state_dir", "cannot be changed remotely"))
    return issues
