"""``smartcity edge status``: ask the running agent's local endpoint, print what it says.

The agent serves ``GET /status`` (:mod:`edge_agent._local`) on ``<state_dir>/agent.sock``
and on ``metrics.host:metrics.port``; this tries the socket first, then the port. Nothing
here needs the uplink or the broker.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

from edge_agent._config import AgentConfig
from edge_agent._errors import EdgeError
from edge_agent._local import SOCKET_NAME

__all__ = ["StatusUnavailable", "fetch_status", "format_status"]


class StatusUnavailable(EdgeError):
    """The agent did not answer on its socket or port (not running, or its loop stalled)."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def fetch_status(cfg: AgentConfig, *, timeout: float = 5.0) -> dict[str, Any]:
    """The agent's ``/status`` document, or :class:`StatusUnavailable` saying where it tried."""
    tried: list[str] = []
    conns: list[tuple[str, http.client.HTTPConnection]] = [
        (str(sock), _UnixConnection(str(sock), timeout))
        for sock in [cfg.gateway.state_dir / SOCKET_NAME]
    ]
    if cfg.metrics.port:
        where = f"{cfg.metrics.host}:{cfg.metrics.port}"
        conns.append(
            (where, http.client.HTTPConnection(cfg.metrics.host, cfg.metrics.port, timeout=timeout))
        )
    for where, conn in conns:
        try:
            conn.request("GET", "/status")
            resp = conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            tried.append(f"{where}: {getattr(exc, 'strerror', None) or exc}")
            continue
        finally:
            conn.close()
        if resp.status != 200:
            tried.append(f"{where}: HTTP {resp.status}")
            continue
        try:
            doc = json.loads(body)
        except ValueError:
            tried.append(f"{where}: not JSON")
            continue
        if isinstance(doc, dict) and doc.get("gateway") == cfg.gateway.id:
            return doc
        tried.append(
            f"{where}: another gateway answered ({doc.get('gateway')!r})"
            if isinstance(doc, dict)
            else f"{where}: unexpected answer"
        )
    raise StatusUnavailable(
        "the agent did not answer (not running, or its event loop is stalled): " + "; ".join(tried)
    )


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}min"
    return f"{seconds / 3600:.1f}h"


def _bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _clock_line(clock: object) -> str:
    """The gateway clock against the server's (the platform's last ``sync-time-check``)."""
    if not isinstance(clock, dict) or not isinstance(clock.get("offset_s"), int | float):
        return "clock: not checked since start (the platform's sync-time-check command)"
    off = " -- CLOCK OFF" if clock.get("off") else ""
    delay = clock.get("delay_s")
    error = f" (±{delay / 2:.3f}s)" if isinstance(delay, int | float) else ""
    threshold = clock.get("threshold_s")
    limit = f", threshold {threshold:g}s" if isinstance(threshold, int | float) else ""
    return (
        f"clock: offset {clock['offset_s']:+.3f}s{error} against the server, checked "
        f"{_age(clock.get('age_s'))} ago{limit}{off}"
    )


def format_status(doc: dict[str, Any]) -> str:
    """The status as an engineer reads it on a terminal."""
    up = doc.get("uplink", {})
    sp = doc.get("spool", {})
    lines = [
        f"gateway {doc.get('gateway')}  version {doc.get('version')}  "
        f"up {_age(doc.get('uptime_s'))}  config version {doc.get('config_version')}",
        "",
        "links:",
    ]
    err = up.get("last_error")
    lines.append(
        f"  uplink      {up.get('state'):<11} connects {up.get('connects', 0)}, "
        f"failed connects {up.get('connect_failures', 0)}, lost {up.get('losses', 0)}"
        + (f"; last error: {up.get('last_errno') or ''} {err}".rstrip() if err else "")
    )
    for name, inp in doc.get("inputs", {}).items():
        drops = inp.get("drops") or {}
        extra = []
        if drops:
            extra.append("drops " + ", ".join(f"{k} {v}" for k, v in sorted(drops.items())))
        if inp.get("failures"):
            extra.append(f"task failures {inp['failures']}")
        if inp.get("clock_offset_s") is not None:
            extra.append(f"device clock {inp['clock_offset_s']:+.3f}s")
        lines.append(f"  {name:<11} {inp.get('state'):<11} {'; '.join(extra)}".rstrip())
        if inp.get("last_error"):
            lines.append(f"  {'':<11} last error: {inp['last_error']}")
    lines += [
        "",
        f"spool: {sp.get('batches')} batch(es), {sp.get('readings')} reading(s), "
        f"{_bytes(sp.get('bytes'))} of {_bytes(sp.get('budget_bytes'))} waiting; "
        f"oldest {_age(sp.get('oldest_age_s'))}; next seq {sp.get('next_seq')}; "
        f"disk free {_bytes(sp.get('disk_free_bytes'))}",
        f"spool drops (budget): {sp.get('dropped_batches')} batch(es), "
        f"{sp.get('dropped_readings')} reading(s)",
    ]
    dropped = doc.get("dropped") or {}
    lines.append(
        "dropped samples: "
        + (", ".join(f"{k} {v}" for k, v in sorted(dropped.items())) if dropped else "none")
    )
    proc = doc.get("process", {})
    lines.append(f"process: RSS {_bytes(proc.get('rss_bytes'))}, CPU {proc.get('cpu_s')}s")
    clock = doc.get("clock")
    lines.append(_clock_line(clock.get("server") if isinstance(clock, dict) else None))
    return "\n".join(lines)
