"""Pre-flight: every file and directory a valid config names, checked on this machine.

Validation (:func:`edge_agent.load_config`) checks the config's shape; it does not open the
uplink's certificates or password file, so a config can be validated on a laptop. Before the
agent runs (``edge check`` in ``ExecStartPre``, and ``edge run`` itself) :func:`preflight`
checks, as the user the agent runs as:

- ``broker.tls`` (``ca_file``, ``cert_file``/``key_file``): files exist, a TLS context loads them;
- ``broker.password_file``: readable and not empty; the same for every local MQTT input;
- ``gateway.state_dir`` and the spool's folder: writable (or creatable), and the spool file
  itself writable if it exists;
- serial devices that are not plugged in: a *note* only (the link retries until they appear).

Register-map files are read when the config validates. Problems are
:class:`edge_agent.ConfigIssue`\\ s with the dotted key: ``edge check`` and ``edge run`` exit
78 (EX_CONFIG) on any, which the systemd unit does not restart.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent._config import AgentConfig, load_config
from edge_agent._errors import ConfigError, ConfigIssue, EdgeError
from foundation import BrokerAccess, BrokerSetupError

__all__ = ["Preflight", "UnusableFiles", "load_checked", "preflight"]


class UnusableFiles(ConfigError):
    """A valid config naming files or directories that are not usable on this machine."""

    def __init__(self, source: str, issues: list[ConfigIssue]) -> None:
        lines = "\n".join(f"  {source}: {issue}" for issue in issues)
        EdgeError.__init__(
            self,
            f"config {source} names files or directories that are not usable "
            f"({len(issues)} problem(s)):\n{lines}",
        )
        self.source = source
        self.issues = issues


def load_checked(path: Path) -> tuple[AgentConfig, list[str]]:
    """``edge check`` and ``edge run``: load and validate ``path``, then :func:`preflight`.

    Returns the config and its notes (problems that do not stop the agent); raises
    :class:`ConfigError` (:class:`UnusableFiles` after the pre-flight) naming every problem.
    """
    cfg = load_config(path)
    found = preflight(cfg)
    if found.issues:
        raise UnusableFiles(str(path), found.issues)
    return cfg, [f"{path}: note: {n}" for n in found.notes]


@dataclass(slots=True)
class Preflight:
    """What :func:`preflight` found: ``issues`` stop the agent, ``notes`` do not."""

    issues: list[ConfigIssue] = field(default_factory=list)
    notes: list[ConfigIssue] = field(default_factory=list)


def preflight(cfg: AgentConfig) -> Preflight:
    """Check the files and directories ``cfg`` names (see the module docstring)."""
    out = Preflight()
    _access(cfg.broker, "broker.", out)
    for i, spec in enumerate(cfg.inputs):
        if isinstance(spec, BrokerAccess):
            _access(spec, f"inputs[{i}].", out)
        for attr in ("serial", "rtu"):
            line = getattr(spec, attr, None)
            url = getattr(line, "url", None)
            if isinstance(url, str) and "://" not in url and not os.path.exists(url):
                out.notes.append(
                    ConfigIssue(
                        f"inputs[{i}].{attr}.url",
                        f"{url} does not exist (yet): the input retries until it appears",
                    )
                )
    _writable_dir(cfg.gateway.state_dir, "gateway.state_dir", out)
    spool_key = "spool.path" if cfg.spool.path is not None else "gateway.state_dir"
    if cfg.spool_path.parent != cfg.gateway.state_dir:
        _writable_dir(cfg.spool_path.parent, spool_key, out)
    if cfg.spool_path.exists() and not os.access(cfg.spool_path, os.R_OK | os.W_OK):
        out.issues.append(ConfigIssue(spool_key, f"spool {cfg.spool_path} is not writable"))
    return out


def _access(access: BrokerAccess, prefix: str, out: Preflight) -> None:
    if access.tls is not None:
        try:
            access.tls.ssl_context(f"{prefix}tls.")
        except BrokerSetupError as exc:
            out.issues.append(ConfigIssue(exc.key, exc.reason))
    if access.password_file is not None:
        key = f"{prefix}password_file"
        try:
            password = access.read_password(key)
        except BrokerSetupError as exc:
            out.issues.append(ConfigIssue(exc.key, exc.reason))
        else:
            if not password:
                out.issues.append(ConfigIssue(key, f"{access.password_file} is empty"))


def _writable_dir(path: Path, key: str, out: Preflight) -> None:
    """``path`` is a writable directory, or the nearest existing ancestor lets us create it."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        out.issues.append(ConfigIssue(key, f"{probe} is not a directory"))
    elif not os.access(probe, os.W_OK | os.X_OK):
        what = (
            "is not writable" if probe == path else f"cannot be created ({probe} is not writable)"
        )
        out.issues.append(ConfigIssue(key, f"{path} {what} by this user"))
