"""Run real mosquitto and influxd as child processes: for tests, benchmarks and the demo.
(The cluster profile's NATS nodes: :mod:`smartcity._localstack_nats`.)

Each service gets a free loopback port (or a given one), its own data directory and a config
file written next to it. ``start()`` returns when the service answers (MQTT port accepts a
connection; influxd ``/ping`` answers 204). ``stop()`` terminates gracefully (mosquitto saves
its persistence file on SIGTERM), ``kill()`` is SIGKILL for fault tests, and both can be
followed by ``start()`` again on the same port and data: that is how tests cut the broker or the
database for a while.

The mosquitto config sets a deliberate queue budget: mosquitto's default
``max_queued_messages 1000`` silently drops QoS 1 messages queued for an offline persistent
session past 1,000, which would break the platform's no-loss guarantee during an ingest
outage (see docs/operations.md).
"""

from __future__ import annotations

import contextlib
import getpass
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from foundation import InfluxQueryError, Startable, free_port, influxql

__all__ = [
    "Influxd",
    "InfluxdTls",
    "LocalService",
    "Mosquitto",
    "MosquittoTls",
    "ServiceError",
    "find_binary",
    "free_port",
]

INSTALL_HINT: Final = {
    "mosquitto": "sudo apt-get install -y mosquitto   (or: make setup)",
    "influxd": "sudo apt-get install -y influxdb   (or: make setup)",
}
_SBIN_DIRS: Final = ("/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin")


class ServiceError(RuntimeError):
    """A local service could not be found, started or reached."""


class InfluxdQueryError(ServiceError, InfluxQueryError):
    """A query to a local influxd failed: both a :class:`ServiceError` of the local stack and
    the :class:`foundation.InfluxQueryError` that any InfluxDB query raises."""


def find_binary(name: str, *, search: tuple[str, ...] = _SBIN_DIRS) -> str:
    """Path of a service binary, searching the sbin directories that PATH may lack."""
    found = shutil.which(name) or next(
        (str(Path(d) / name) for d in search if (Path(d) / name).is_file()), None
    )
    if found is None:
        hint = INSTALL_HINT.get(name, f"sudo apt-get install -y {name}")
        raise ServiceError(f"{name} is not installed; install it with: {hint}")
    return found


class LocalService(Startable):
    """A child process with a data directory, a port and a readiness check."""

    name = "service"

    def __init__(self, *, data_dir: Path, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port or free_port(host)
        self._proc: subprocess.Popen[bytes] | None = None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / f"{self.name}.log"

    # -- to override ---------------------------------------------------------------------
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 30.0) -> None:
        if self.running:
            return
        command = self._command()
        log = self.log_path.open("ab")
        try:
            # Own process group: Ctrl-C on the terminal of a test run or the demo must not
            # stop the broker or the database before their users are done with them.
            self._proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                process_group=0,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServiceError(
                    f"{self.name} exited with {self._proc.returncode} at start; "
                    f"log {self.log_path}:\n{self._log_tail()}"
                )
            if self._ready():
                return
            time.sleep(0.05)
        self.kill()
        raise ServiceError(
            f"{self.name} did not answer within {timeout}s; log:\n{self._log_tail()}"
        )

    def stop(self, timeout: float = 15.0) -> None:
        """Graceful stop (SIGTERM, then SIGKILL after ``timeout``)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """Hard stop, as a crash or power cut would."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait()

    def _log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


@dataclass(frozen=True, kw_only=True)
class MosquittoTls:
    """A second, TLS-only listener (``mqtts://``) next to the plain one.

    ``require_certificate``: clients must present a certificate signed by ``ca_file``;
    ``use_identity_as_username``: the broker then knows them by the certificate's CN.
    The password file (if any) applies to both listeners.
    """

    ca_file: Path
    cert_file: Path
    key_file: Path
    require_certificate: bool = False
    use_identity_as_username: bool = False
    port: int | None = None


class Mosquitto(LocalService):
    """A private mosquitto broker (MQTT 3.1.1 and 5) on loopback; with ``tls``, also a TLS
    listener on ``tls_port`` (``tls_url``)."""

    name = "mosquitto"

    def __init__(
        self,
        *,
        data_dir: Path,
        host: str = "127.0.0.1",
        port: int | None = None,
        max_queued_messages: int = 1_000_000,
        max_queued_bytes: int = 1024**3,
        password_file: Path | None = None,
        extra_config: str = "",
        tls: MosquittoTls | None = None,
    ) -> None:
        super().__init__(data_dir=data_dir, host=host, port=port)
        self.max_queued_messages = max_queued_messages
        self.max_queued_bytes = max_queued_bytes
        self.password_file = password_file
        self.extra_config = extra_config
        self.tls = tls
        self.tls_port: int | None = None if tls is None else tls.port or free_port(host)
        self.config_path = self.data_dir / "mosquitto.conf"

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def tls_url(self) -> str | None:
        return None if self.tls_port is None else f"mqtts://{self.host}:{self.tls_port}"

    def _tls_listener(self) -> str:
        # Listener options apply to the listener declared last, so this block goes last.
        t = self.tls
        if t is None:
            return ""
        return (
            f"listener {self.tls_port} {self.host}\n"
            f"cafile {t.ca_file}\ncertfile {t.cert_file}\nkeyfile {t.key_file}\n"
            f"require_certificate {str(t.require_certificate).lower()}\n"
            f"use_identity_as_username {str(t.use_identity_as_username).lower()}\n"
        )

    def config_text(self) -> str:
        auth = (
            f"allow_anonymous false\npassword_file {self.password_file}\n"
            if self.password_file
            else "allow_anonymous true\n"
        )
        return (
            "# written by smartcity localstack\n"
            f"listener {self.port} {self.host}\n"
            f"{auth}"
            "persistence true\n"
            f"persistence_location {self.data_dir}/\n"
            "autosave_interval 60\n"
            # The queue budget for offline persistent sessions: deliberately large, see
            # the module docstring. Bytes cap it so a runaway cannot exhaust memory.
            f"max_queued_messages {self.max_queued_messages}\n"
            f"max_queued_bytes {self.max_queued_bytes}\n"
            # Outgoing QoS 1 window for MQTT 3.1.1 clients (v5 clients set Receive Maximum).
            "max_inflight_messages 1000\n"
            f"user {getpass.getuser()}\n"
            f"log_dest file {self.log_path}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            "connection_messages true\n"
            f"{self.extra_config}"
            f"{self._tls_listener()}"
        )

    def _command(self) -> list[str]:
        self.config_path.write_text(self.config_text())
        return [find_binary("mosquitto"), "-c", str(self.config_path)]

    def _ready(self) -> bool:
        ports = [self.port] if self.tls_port is None else [self.port, self.tls_port]
        return all(_accepts(self.host, p) for p in ports)


def _accepts(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), 0.2):
        return True
    return False


@dataclass(frozen=True, kw_only=True)
class InfluxdTls:
    """HTTPS instead of HTTP on influxd's port (``[http] https-enabled``).

    ``cert_file``/``key_file``: the server's certificate (chain) and key, PEM. ``ca_file``:
    what :class:`Influxd`'s own helpers (readiness probe, ``query``, ``write``) verify the
    server against. influxd 1.x does not ask clients for certificates.
    """

    cert_file: Path
    key_file: Path
    ca_file: Path


class Influxd(LocalService):
    """A private InfluxDB 1.x server; talks the v1 HTTP API (``/write``, ``/query``).

    With ``tls`` it serves HTTPS only (``url`` says ``https://``); ``tls`` may be changed
    between a ``stop()`` and the next ``start()`` (a certificate rotation).
    """

    name = "influxd"

    def __init__(
        self,
        *,
        data_dir: Path,
        host: str = "127.0.0.1",
        port: int | None = None,
        rpc_port: int | None = None,
        tls: InfluxdTls | None = None,
    ) -> None:
        super().__init__(data_dir=data_dir, host=host, port=port)
        self.rpc_port = rpc_port or free_port(host)
        self.config_path = self.data_dir / "influxdb.conf"
        self.tls = tls

    @property
    def url(self) -> str:
        scheme = "http" if self.tls is None else "https"
        return f"{scheme}://{self.host}:{self.port}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client context verifying this server against ``tls.ca_file`` (``None``: HTTP)."""
        if self.tls is None:
            return None
        return ssl.create_default_context(cafile=str(self.tls.ca_file))

    def _https(self) -> str:
        t = self.tls
        if t is None:
            return ""
        return (
            "  https-enabled = true\n"
            f'  https-certificate = "{t.cert_file}"\n'
            f'  https-private-key = "{t.key_file}"\n'
        )

    def config_text(self) -> str:
        d = self.data_dir
        return f"""# written by smartcity localstack
reporting-disabled = true
bind-address = "{self.host}:{self.rpc_port}"
[meta]
  dir = "{d}/meta"
  logging-enabled = false
[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false
  trace-logging-enabled = false
[monitor]
  store-enabled = false
[http]
  enabled = true
  bind-address = "{self.host}:{self.port}"
  auth-enabled = false
  log-enabled = false
{self._https()}[logging]
  level = "warn"
[subscriber]
  enabled = false
[continuous_queries]
  enabled = false
"""

    def _command(self) -> list[str]:
        self.config_path.write_text(self.config_text())
        return [find_binary("influxd"), "-config", str(self.config_path)]

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(  # noqa: S310
                f"{self.url}/ping", timeout=0.5, context=self.ssl_context()
            ) as resp:
                return bool(resp.status == 204)
        except (OSError, urllib.error.URLError):
            return False

    # -- small v1 HTTP helpers for tests, benchmarks and the demo ---------------------------
    def query(self, q: str, *, db: str | None = None, epoch: str = "ns") -> dict[str, Any]:
        """Run InfluxQL and return the decoded JSON answer; raise on an error result."""
        try:
            return influxql(self.url, q, db=db, epoch=epoch, context=self.ssl_context())
        except InfluxQueryError as exc:
            raise InfluxdQueryError(str(exc)) from exc

    def write(self, db: str, body: bytes, *, precision: str = "ns") -> None:
        """Write line protocol; raise :class:`ServiceError` with InfluxDB's message on failure."""
        qs = urllib.parse.urlencode({"db": db, "precision": precision})
        req = urllib.request.Request(f"{self.url}/write?{qs}", data=body, method="POST")  # noqa: S310
        try:
            with urllib.request.urlopen(  # noqa: S310
                req, timeout=30, context=self.ssl_context()
            ) as resp:
                if resp.status != 204:
                    raise ServiceError(f"write answered {resp.status}")
        except urllib.error.HTTPError as exc:
            raise ServiceError(f"write answered {exc.code}: {exc.read().decode()}") from exc

    def create_database(self, db: str) -> None:
        self.query(f'CREATE DATABASE "{db}"')

    def drop_database(self, db: str) -> None:
        self.query(f'DROP DATABASE "{db}"')

    def count(self, db: str, measurement: str, field: str) -> int:
        """Number of points holding ``field`` in ``measurement`` (trusted names only)."""
        answer = self.query(f'SELECT count("{field}") FROM "{measurement}"', db=db)  # noqa: S608
        series = answer["results"][0].get("series")
        return int(series[0]["values"][0][1]) if series else 0
