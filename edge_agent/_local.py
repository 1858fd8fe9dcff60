"""The agent's local endpoint: ``/metrics``, ``/healthz`` and ``/status`` on the event loop.

::

    127.0.0.1:<metrics.port> (default 9108) ─┐
    <state_dir>/agent.sock (unix, 0660) ─────┴─▶ GET /metrics   Prometheus text (scrape time)
                                                 GET /healthz   200 "ok": the loop answers
                                                 GET /status    JSON: links, spool, drops,
                                                                errors, clock (``edge status``)
                                                 anything else  404 (405 for other methods)

Both listeners are served by the agent's own event loop, not a thread: a loop that stalls
stops answering ``/healthz`` (and stops the systemd watchdog pings, :mod:`edge_agent._notify`)
instead of a thread reporting a healthy agent. Neither needs the uplink. Requests are bounded
(8 KiB of head, 5 s to send it, 16 connections at a time); every response closes the
connection. A listener that cannot be opened (port taken, socket path too long) is logged and
skipped: the agent runs without it. prometheus_client is imported on the first scrape only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import types
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Self

import msgspec

from edge_agent._snapshot import AgentSnapshot, dropped_with_links, update_report

if TYPE_CHECKING:
    from edge_agent._looplag import LoopLagHistogram

__all__ = ["SOCKET_NAME", "LocalEndpoint", "status_document"]

log: Final = logging.getLogger("edge_agent")

#: The unix socket in ``gateway.state_dir``.
SOCKET_NAME: Final = "agent.sock"
_MAX_HEAD: Final = 8 * 1024
_HEAD_TIMEOUT_S: Final = 5.0
_MAX_CONNECTIONS: Final = 16
#: sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_UNIX_PATH: Final = 107


def status_document(snap: AgentSnapshot) -> dict[str, Any]:
    """What ``GET /status`` returns (and ``edge status`` prints)."""
    st = snap.spool
    up = snap.uplink
    return {
        "gateway": snap.gateway,
        "version": snap.version,
        "uptime_s": snap.uptime_s,
        "config_version": snap.config_version,
        "links": snap.links,
        "inputs": {
            name: {
                "state": inp.state,
                "last_error": inp.last_error,
                "failures": snap.input_failures.get(name, 0),
                "rejected": dict(snap.input_rejects.get(name, {})),
                "drops": {k: v for k, v in inp.drops.items() if v},
                "counters": dict(inp.counters),
                "clock_offset_s": inp.clock_offset_s,
            }
            for name, inp in snap.input_links.items()
        },
        "uplink": {
            "state": up.state,
            "connects": up.connects,
            "connect_failures": up.connect_failures,
            "losses": up.losses,
            "last_error": up.last_error,
            "last_errno": up.last_errno,
            "published_batches": up.published_batches,
            "acked_batches": up.acked_batches,
        },
        "spool": {
            "batches": st.batches,
            "readings": st.readings,
            "bytes": st.bytes,
            "budget_bytes": st.budget_bytes,
            "oldest_age_s": st.oldest_age_s,
            "dropped_batches": st.dropped_batches,
            "dropped_readings": st.dropped_readings,
            "next_seq": st.next_seq,
            "disk_free_bytes": snap.disk_free_bytes,
        },
        "dropped": {
            stage: sum(per.values()) for stage, per in dropped_with_links(snap).items()
        },
        "clock": {
            "gateway_ts": snap.ts,
            "device_offsets_s": {
                name: inp.clock_offset_s
                for name, inp in snap.input_links.items()
                if inp.clock_offset_s is not None
            },
            # The last sync-time-check the platform recorded (None: none since start).
            "server": None if snap.clock is None else {
                "offset_s": snap.clock.offset_s,
                "delay_s": snap.clock.delay_s,
                "checked_at_s": snap.clock.checked_ts / 1e9,
                "age_s": round(snap.ts / 1e9 - snap.clock.checked_ts / 1e9, 1),
                "threshold_s": snap.clock.threshold_s,
                "off": snap.clock.off,
            },
        },
        "process": {"rss_bytes": snap.rss_bytes, "cpu_s": round(snap.cpu_s, 3)},
        "update": None if snap.update is None else msgspec.to_builtins(update_report(snap.update)),
    }


class LocalEndpoint:
    """Serves the local endpoint while entered (an async context manager, not re-entrant)."""

    def __init__(
        self,
        snapshot: Callable[[], AgentSnapshot],
        *,
        tcp: tuple[str, int] | None,
        unix_path: Path | None,
        loop_lag: LoopLagHistogram | None = None,
    ) -> None:
        self._snapshot = snapshot
        self._loop_lag = loop_lag
        self._tcp = tcp
        self._unix_path = unix_path
        self._servers: list[asyncio.Server] = []
        self._registry: Any = None
        self._slots = asyncio.Semaphore(_MAX_CONNECTIONS)
        #: The TCP port actually bound (``metrics.port: 0`` picks a free one); 0 if none.
        self.port = 0
        self.unix_path: Path | None = None

    async def __aenter__(self) -> Self:
        if self._tcp is not None:
            host, port = self._tcp
            try:
                server = await asyncio.start_server(self._serve, host, port, reuse_address=True)
            except OSError as exc:
                log.warning(
                    f"metrics endpoint not served on {host}:{port}: {exc.strerror or exc}",
                    extra={"host": host, "port": port},
                )
            else:
                self._servers.append(server)
                self.port = int(server.sockets[0].getsockname()[1])
        if self._unix_path is not None:
            await self._start_unix(self._unix_path)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()
        for server in servers:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await server.wait_closed()
        if self.unix_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.unix_path)
            self.unix_path = None

    async def _start_unix(self, path: Path) -> None:
        if len(os.fsencode(path)) > _MAX_UNIX_PATH:
            log.warning(
                f"status socket not served: path longer than {_MAX_UNIX_PATH} bytes: {path}"
            )
            return
        if not _prepare_unix(path):
            return
        try:
            server = await asyncio.start_unix_server(self._serve, str(path))
            os.chmod(path, 0o660)
        except OSError as exc:
            log.warning(f"status socket not served on {path}: {exc.strerror or exc}")
            return
        self._servers.append(server)
        self.unix_path = path

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._slots.locked():
            writer.close()
            return
        async with self._slots:
            try:
                status, ctype, body = await self._respond(reader)
                head = (
                    f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                )
                writer.write(head.encode("ascii") + body)
                async with asyncio.timeout(_HEAD_TIMEOUT_S):
                    await writer.drain()
            except (OSError, TimeoutError):
                pass  # the client went away or is too slow: nothing to tell it
            finally:
                writer.close()

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[str, str, bytes]:
        try:
            async with asyncio.timeout(_HEAD_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            return "400 Bad Request", "text/plain", b"bad request\n"
        if len(head) > _MAX_HEAD:
            return "431 Request Header Fields Too Large", "text/plain", b"too large\n"
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return "400 Bad Request", "text/plain", b"bad request\n"
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if target not in (b"/metrics", b"/healthz", b"/status"):
            return "404 Not Found", "text/plain", b"not found: /metrics, /healthz, /status\n"
        if method != b"GET":
            return "405 Method Not Allowed", "text/plain", b"GET only\n"
        if target == b"/healthz":
            return "200 OK", "text/plain", b"ok\n"
        if target == b"/status":
            body = json.dumps(status_document(self._snapshot()), indent=1).encode()
            return "200 OK", "application/json", body
        return "200 OK", "text/plain; version=0.0.4; charset=utf-8", self._metrics()

    def _metrics(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest

        from edge_agent._metrics import SnapshotCollector

        if self._registry is None:
            self._registry = CollectorRegistry()
            self._registry.register(SnapshotCollector(self._snapshot, loop_lag=self._loop_lag))
        return bytes(generate_latest(self._registry))


def _prepare_unix(path: Path) -> bool:
    """Remove a socket a crash left behind; False if another agent still answers on it."""
    if path.exists() or path.is_symlink():
        if _answers(path):
            log.warning(f"status socket not served: another agent answers on {path}")
            return False
        with contextlib.suppress(OSError):
            path.unlink()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.warning(f"status socket not served on {path}: {exc.strerror or exc}")
        return False
    return True


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
        except OSError:
            return False
        return True
