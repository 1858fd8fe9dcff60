"""Remote operations on a running agent: ``logs``, ``restart``, ``sync-time-check``, ``time-sync``.

::

    API ── cmd (engineer, audited) ──▶ Commands.handle ──┬─ logs            LogRing (in memory)
                                                         ├─ restart         ack, then clean stop
                                                         ├─ sync-time-check ClockCheck (health)
                                                         └─ time-sync ─▶ job queue ─▶ TIME_SYNC
                                                            (async)      to every firmware device

``logs``: the agent keeps its last log records in a ring (:class:`LogRing`, at most
:data:`RING_LINES` records and :data:`RING_BYTES` bytes, oldest evicted first), rendered as JSON
lines like ``--log-format json`` with secrets redacted (keys that name a password, token,
secret, key or credential; ``user:password@`` in URLs; ``password=...`` in text; PEM private
keys). A request takes the last ``lines`` (default 100, at most 1,000), optionally only those of
the last ``since_s`` seconds and at or above ``level``; the answer is capped to ``max_bytes``
(default 64 KiB, at most 128 KiB: half the wire payload limit), newest kept, and says whether it
was ``truncated``.

``restart``: the answer goes out first; the stop follows :data:`RESTART_DELAY_S` later so the
answer is on the wire before the death message. The stop is the clean one of SIGTERM (readings
committed to the spool, which replays on the next start). :func:`edge_agent._agent.run_agent`
then returns ``True`` and ``edge run`` exits :data:`RESTART_EXIT_CODE` under systemd (the unit's
``Restart=always`` starts it again) or re-executes itself elsewhere (:func:`restart_process`).

``sync-time-check`` (NTP's four time stamps, over the broker)::

    API  t1 ── request {"t1_ns": t1} ──────────▶ agent t2 (receipt), t3 (answer)
    API  t4 ◀── answer {"t2_ns": t2, "t3_ns": t3} ───┘
    offset = ((t2 - t1) + (t3 - t4)) / 2   gateway clock minus server clock
    delay  = (t4 - t1) - (t3 - t2)         round trip through the broker

The API computes both when the answer arrives (it stamps t4), stores them, and sends them back
(``{"record": {...}}``) so the agent reports the last check in its health and ``edge status``.
The error of the offset is at most ``delay / 2``. Tests skew the agent's clock for this check
with ``SMARTCITY_EDGE_DEBUG_CLOCK_OFFSET_S`` (seconds, added to the agent's time stamps).

``time-sync``: TIME_SYNC (firmware protocol, docs/firmware-protocol.md) with the gateway's time
to every device that said HELLO on a ``firmware`` input; the answer counts the devices that
acknowledged (``acked``) and lists the ones that did not (``failed``).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, NoReturn, Protocol

from edge_agent._commands import Commands
from edge_agent._errors import CommandError
from edge_agent._snapshot import ClockSnapshot

__all__ = [
    "CLOCK_OFFSET_ENV",
    "RESTART_EXIT_CODE",
    "LogRing",
    "RemoteOps",
    "redact",
    "register_ops",
    "restart_process",
]

log: Final = logging.getLogger("edge_agent")

#: Exit code of ``edge run`` after a ``restart`` command under systemd (EX_TEMPFAIL).
RESTART_EXIT_CODE: Final = 75
#: Test hook: seconds added to the agent's clock for ``sync-time-check`` (and nothing else).
CLOCK_OFFSET_ENV: Final = "SMARTCITY_EDGE_DEBUG_CLOCK_OFFSET_S"
RESTART_DELAY_S: Final = 0.3
RING_LINES: Final = 2000
RING_BYTES: Final = 512 * 1024
MAX_LINES: Final = 1000
DEFAULT_LINES: Final = 100
MAX_BYTES: Final = 128 * 1024
DEFAULT_BYTES: Final = 64 * 1024
_LEVELS: Final = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}

_RECORD_ATTRS: Final = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_SECRET_KEY: Final = re.compile(
    r"pass(word|wd)?|secret|token|api[_-]?key|authori[sz]ation|credential|private[_-]?key|"
    r"cookie|^key$",
    re.IGNORECASE,
)
_URL_USERINFO: Final = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@/\s]*@",
                                  re.IGNORECASE)
_KV_SECRET: Final = re.compile(
    r"(?P<k>\b(?:pass(?:word|wd)?|secret|token|api[_-]?key|authorization)\b\s*[=:]\s*)"
    r"(?P<q>['\"]?)[^\s'\",;]+",
    re.IGNORECASE,
)
_BEARER: Final = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
_PEM: Final = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", re.DOTALL
)
REDACTED: Final = "***"


def redact(text: str) -> str:
    """``text`` with passwords in URLs, ``password=...`` pairs, bearer tokens and PEM private
    keys replaced by ``***``."""
    text = _PEM.sub("-----PRIVATE KEY " + REDACTED + "-----", text)
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", text)
    text = _KV_SECRET.sub(lambda m: f"{m['k']}{m['q']}{REDACTED}", text)
    return _BEARER.sub(lambda m: f"{m[1]} {REDACTED}", text)


def _redact_value(key: str, value: object) -> object:
    if _SECRET_KEY.search(key):
        return REDACTED
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {str(k): _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value("", v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact(str(value))


@dataclass(frozen=True, slots=True)
class _Line:
    created: float
    level: int
    text: str


class LogRing(logging.Handler):
    """The agent's last log records as redacted JSON lines, bounded in lines and bytes."""

    def __init__(self, *, lines: int = RING_LINES, max_bytes: int = RING_BYTES) -> None:
        super().__init__(logging.DEBUG)
        self._lines: collections.deque[_Line] = collections.deque()
        self._max_lines = lines
        self._max_bytes = max_bytes
        self._bytes = 0
        self._mutex = threading.Lock()
        #: Records evicted to stay within the bounds.
        self.evicted = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            entry: dict[str, Any] = {
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                + f".{int(record.msecs):03d}Z",
                "level": record.levelname.lower(),
                "logger": record.name,
                "event": redact(record.getMessage()),
            }
            for k, v in record.__dict__.items():
                if k not in _RECORD_ATTRS and not k.startswith("_") and k not in entry:
                    entry[k] = _redact_value(k, v)
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                entry["exception"] = redact(f"{type(exc).__name__}: {exc}")
            text = json.dumps(entry, default=str, ensure_ascii=False)
        except (TypeError, ValueError, RecursionError):  # never raise into a log call
            self.handleError(record)
            return
        line = _Line(record.created, record.levelno, text[:MAX_BYTES])
        with self._mutex:
            self._lines.append(line)
            self._bytes += len(line.text)
            while len(self._lines) > self._max_lines or self._bytes > self._max_bytes:
                self._bytes -= len(self._lines.popleft().text)
                self.evicted += 1

    def query(
        self, *, lines: int, since: float | None, level: int, max_bytes: int
    ) -> dict[str, Any]:
        """The newest ``lines`` records at or above ``level`` (created after ``since``, a
        ``time.time()``), oldest first, at most ``max_bytes`` of text in all."""
        with self._mutex:
            snapshot = list(self._lines)
        picked: list[str] = []
        size = 0
        truncated = False
        for line in reversed(snapshot):
            if since is not None and line.created < since:
                break
            if line.level < level:
                continue
            if len(picked) >= lines:
                truncated = True
                break
            if size + len(line.text) + 1 > max_bytes:
                truncated = True
                break
            picked.append(line.text)
            size += len(line.text) + 1
        picked.reverse()
        return {"lines": picked, "count": len(picked), "bytes": size, "truncated": truncated,
                "held": len(snapshot), "evicted": self.evicted}


def parse_logs_args(args: Mapping[str, Any]) -> tuple[int, float | None, int, int]:
    """``lines``, ``since_s``, ``level``, ``max_bytes`` of a ``logs`` request, checked."""
    unknown = set(args) - {"lines", "since_s", "level", "max_bytes"}
    if unknown:
        raise CommandError(
            f"logs: unknown argument(s) {sorted(unknown)} (known: lines, since_s, level, "
            "max_bytes)"
        )
    lines = _int_arg(args, "lines", DEFAULT_LINES, 1, MAX_LINES)
    max_bytes = _int_arg(args, "max_bytes", DEFAULT_BYTES, 1024, MAX_BYTES)
    since_s = args.get("since_s")
    if since_s is not None and (
        isinstance(since_s, bool) or not isinstance(since_s, int | float)
        or not 0 < since_s <= 7 * 86400
    ):
        raise CommandError("logs: since_s must be a number of seconds in (0, 604800]")
    level_name = args.get("level", "debug")
    if not isinstance(level_name, str) or level_name.lower() not in _LEVELS:
        raise CommandError(f"logs: level must be one of {', '.join(_LEVELS)}")
    since = None if since_s is None else time.time() - float(since_s)
    return lines, since, _LEVELS[level_name.lower()], max_bytes


def _int_arg(args: Mapping[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    v = args.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise CommandError(f"logs: {key} must be an integer in [{lo}, {hi}]")
    return v


class OpsTarget(Protocol):
    """What the operations act on (the agent)."""

    gateway: str

    def request_restart(self) -> None: ...

    def firmware_links(self) -> Iterable[tuple[str, Any]]: ...


def clock_skew_s(env: Mapping[str, str] | None = None) -> float:
    """The test hook's skew (:data:`CLOCK_OFFSET_ENV`), 0.0 when unset or not a number."""
    raw = (os.environ if env is None else env).get(CLOCK_OFFSET_ENV, "")
    try:
        skew = float(raw) if raw else 0.0
    except ValueError:
        log.warning("ignored: not a number", extra={"variable": CLOCK_OFFSET_ENV, "value": raw})
        return 0.0
    return skew if abs(skew) < 10 * 365 * 86400 else 0.0


class RemoteOps:
    """The handlers of ``logs``, ``restart``, ``sync-time-check`` and ``time-sync``."""

    def __init__(
        self,
        target: OpsTarget,
        *,
        ring: LogRing | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.target = target
        self.ring = ring or LogRing()
        self._skew_ns = int(clock_skew_s() * 1e9)
        self._clock_ns = clock_ns
        #: The last clock check the platform recorded (health, ``edge status``).
        self.clock: ClockSnapshot | None = None

    def now_ns(self) -> int:
        """The agent's clock as this check sees it (skewed by the test hook only)."""
        return self._clock_ns() + self._skew_ns

    # -- handlers ------------------------------------------------------------------------------
    def logs(self, args: dict[str, Any]) -> dict[str, Any]:
        lines, since, level, max_bytes = parse_logs_args(args)
        return self.ring.query(lines=lines, since=since, level=level, max_bytes=max_bytes)

    def restart(self, args: dict[str, Any]) -> dict[str, Any]:
        if args:
            raise CommandError(f"restart: takes no arguments, got {sorted(args)}")
        log.warning("restart requested by command", extra={"gateway": self.target.gateway})
        # After the answer: Commands publishes it when this returns, on this loop turn.
        asyncio.get_running_loop().call_later(RESTART_DELAY_S, self.target.request_restart)
        return {"restarting": True, "delay_s": RESTART_DELAY_S,
                "mode": "exit" if under_systemd() else "exec"}

    def sync_time_check(self, args: dict[str, Any]) -> dict[str, Any]:
        t2 = self.now_ns()
        if "record" in args:
            return self._record(args)
        unknown = set(args) - {"t1_ns"}
        t1 = args.get("t1_ns")
        if unknown or isinstance(t1, bool) or not isinstance(t1, int) or t1 <= 0:
            raise CommandError("sync-time-check: give t1_ns (the sender's time, ns since epoch)")
        return {"t1_ns": t1, "t2_ns": t2, "t3_ns": self.now_ns()}

    def _record(self, args: dict[str, Any]) -> dict[str, Any]:
        rec = args.get("record")
        if set(args) != {"record"} or not isinstance(rec, dict):
            raise CommandError("sync-time-check: record must be an object")
        try:
            offset = _number(rec, "offset_s", 10 * 365 * 86400.0)
            delay = _number(rec, "delay_s", 3600.0)
            threshold = _number(rec, "threshold_s", 86400.0)
            checked = rec["checked_ts"]
            if isinstance(checked, bool) or not isinstance(checked, int) or checked <= 0:
                raise CommandError("sync-time-check: record.checked_ts must be ns since epoch")
        except KeyError as exc:
            raise CommandError(f"sync-time-check: record.{exc.args[0]} is missing") from None
        self.clock = ClockSnapshot(
            offset_s=round(offset, 6), delay_s=round(delay, 6), checked_ts=checked,
            threshold_s=threshold, off=abs(offset) > threshold,
        )
        log.log(
            logging.WARNING if self.clock.off else logging.INFO,
            "clock checked" + (": clock off" if self.clock.off else ""),
            extra={"offset_s": self.clock.offset_s, "delay_s": self.clock.delay_s,
                   "threshold_s": threshold},
        )
        return {"recorded": True, "off": self.clock.off}

    async def time_sync(self, args: dict[str, Any]) -> dict[str, Any]:
        """TIME_SYNC to every device that said HELLO on a firmware input."""
        from firmware_bridge import FirmwareBridgeError, TimeSync

        if args:
            raise CommandError(f"time-sync: takes no arguments, got {sorted(args)}")
        acked = 0
        failed: list[dict[str, Any]] = []
        devices = 0
        for input_name, link in self.target.firmware_links():
            for device_id, dev in list(link.devices.items()):
                if dev.hello is None:
                    continue
                devices += 1
                try:
                    await link.send_command(
                        TimeSync(unix_ms=time.time_ns() // 1_000_000), device_id=device_id
                    )
                except (FirmwareBridgeError, asyncio.CancelledError) as exc:
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    failed.append({"input": input_name, "device": dev.name,
                                   "error": f"{type(exc).__name__}: {exc}"})
                else:
                    acked += 1
        log.info("time sync sent", extra={"devices": devices, "acked": acked,
                                          "failed": len(failed)})
        return {"devices": devices, "acked": acked, "failed": failed}


def _number(rec: Mapping[str, Any], key: str, bound: float) -> float:
    v = rec[key]
    if isinstance(v, bool) or not isinstance(v, int | float) or not -bound <= v <= bound:
        raise CommandError(f"sync-time-check: record.{key} must be a number within ±{bound:g}")
    return float(v)


def under_systemd(env: Mapping[str, str] | None = None) -> bool:
    """Started by systemd (it sets ``INVOCATION_ID`` for every unit it runs)."""
    return bool((os.environ if env is None else env).get("INVOCATION_ID"))


def restart_process() -> NoReturn:
    """After a ``restart`` command: exit :data:`RESTART_EXIT_CODE` under systemd (the unit
    restarts the agent), else replace this process with a fresh one (same pid, same argv)."""
    logging.shutdown()
    if under_systemd():
        sys.stdout.flush()
        raise SystemExit(RESTART_EXIT_CODE)
    sys.stdout.flush()
    sys.stderr.flush()
    # orig_argv: the interpreter's own command line (``-m edge_agent``, flags included).
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])  # noqa: S606 - our argv


def register_ops(ops: RemoteOps, commands: Commands) -> None:
    """Register the operations' handlers with the agent's :class:`Commands`."""
    commands.register("logs", ops.logs)
    commands.register("restart", ops.restart)
    commands.register("sync-time-check", ops.sync_time_check)
    commands.register_async("time-sync", ops.time_sync)
