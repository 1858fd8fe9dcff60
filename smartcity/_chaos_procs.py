"""The chaos run's child processes: ingest workers and the API, each in its own process
group with its log file, and the hard kill of mosquitto (with or without a fresh save)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from foundation import free_port
from smartcity._chaos_plan import ChaosConfig
from smartcity._localstack import Influxd, Mosquitto

__all__ = ["ApiProcess", "ChildProcess", "WorkerProcess", "kill_broker", "worker_config"]


class ChildProcess:
    """A child service in its own process group, its output appended to ``log_path``."""

    def __init__(self, command: list[str], log_path: Path, env: dict[str, str] | None = None):
        self.command = command
        self.log_path = log_path
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                process_group=0, env={**os.environ, **self.env},
            )  # fmt: skip

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()

    def terminate(self, timeout: float = 30.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class WorkerProcess(ChildProcess):
    """One ingest worker process (``python -m ingest run``)."""

    def __init__(self, client_id: str, config_path: Path, log_path: Path) -> None:
        self.client_id = client_id
        self.config_path = config_path
        self.metrics_port = free_port()
        super().__init__(
            [sys.executable, "-m", "ingest", "run", "--config", str(config_path),
             "--metrics-port", str(self.metrics_port)],
            log_path,
        )  # fmt: skip
        #: Down on purpose (killed by the schedule): the supervisor leaves it alone.
        self.held_down = False

    def connected(self) -> bool:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                text: str = resp.read().decode()
        except OSError:
            return False
        return "smartcity_ingest_broker_connected 1.0" in text


class ApiProcess(ChildProcess):
    """The API process (``python -m smartcity api run``), for its gap repair: every
    ``gap_repair_interval_s`` it asks online gateways for the batches ingest's bookkeeping
    lacks. Settings through flags and ``SMARTCITY_API_*`` variables, as an operator would."""

    def __init__(self, config: ChaosConfig, broker: Mosquitto, influxd: Influxd,
                 data: Path, completeness_window_s: int) -> None:  # fmt: skip
        self.port = free_port()
        super().__init__(
            [
                sys.executable, "-m", "smartcity", "api", "run", "--host", "127.0.0.1",
                "--port", str(self.port), "--mqtt-host", broker.host,
                "--mqtt-port", str(broker.port), "--topic-root", config.topic_root,
                "--influx-url", influxd.url, "--database", config.database,
                "--database-url", f"sqlite:///{data / 'api.sqlite3'}", "--log-format", "json",
            ],
            data / "api.log",
            {
                "SMARTCITY_API_MQTT__CLIENT_ID": "chaos-api",
                "SMARTCITY_API_GAP_REPAIR_INTERVAL_S": str(config.gap_repair_interval_s),
                # The simulated clock runs behind the wall clock (see sim_start_ns): the
                # window must reach back to the start of the run.
                "SMARTCITY_API_COMPLETENESS_WINDOW": f"{completeness_window_s}s",
            },
        )  # fmt: skip
        self.stopping = False

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def terminate(self, timeout: float = 30.0) -> None:
        self.stopping = True
        super().terminate(timeout)


def kill_broker(broker: Mosquitto, *, save_first: bool) -> bool:
    """SIGKILL mosquitto; with ``save_first``, right after it wrote its persistence file
    (SIGUSR1 makes mosquitto save at once). True when the save was seen on disk."""
    saved = False
    pid = broker.pid
    if save_first and pid is not None:
        db = broker.data_dir / "mosquitto.db"
        before = db.stat().st_mtime_ns if db.exists() else 0
        os.kill(pid, signal.SIGUSR1)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            if db.exists() and db.stat().st_mtime_ns != before:
                saved = True
                time.sleep(0.05)  # let it finish the file it started
                break
            time.sleep(0.01)
    broker.kill()
    return saved


def worker_config(config: ChaosConfig, client_id: str, broker: Mosquitto,
                   influxd: Influxd) -> dict[str, Any]:  # fmt: skip
    return {
        "mqtt": {"host": broker.host, "port": broker.port, "client_id": client_id,
                 "group": "ingest", "topic_root": config.topic_root},
        "influx": {"url": influxd.url, "database": config.database},
        "log_level": "INFO",
        "log_format": "json",
    }  # fmt: skip
