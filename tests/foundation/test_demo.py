"""`smartcity demo` runs the end-to-end slice for real and leaves no process behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _processes_using(path: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(path) in cmdline:
            found.append(proc)
    return found


def test_demo_stores_every_reading_it_sent_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    var = tmp_path / "var"
    # Its own session, so that the SIGINT below reaches the demo's whole process group the
    # way a terminal's Ctrl-C does.
    proc = subprocess.Popen(
        [sys.executable, "-m", "smartcity", "demo", "--var-dir", str(var)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if sum("gateways online" in line for line in list(lines)) >= 3:  # ~6 s of status
            break
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)
    try:
        returncode = proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(timeout=10)
    proc.stdout.close()
    output = "".join(lines)
    result = subprocess.CompletedProcess(proc.args, returncode, output, "")
    assert result.returncode == 0, result.stdout
    assert "[demo] stopping" in result.stdout
    rates = [float(x) for x in re.findall(r"(\d+) readings/s stored", result.stdout)]
    assert rates, result.stdout
    assert max(rates) > 0, result.stdout
    online = [int(x) for x in re.findall(r"(\d+) gateways online", result.stdout)]
    assert online, result.stdout
    assert max(online) >= 200 + 4  # the simulated fleet and the four real edge agents
    summary = re.search(r"fleet: sent (\d+) readings, stored (\d+)", result.stdout)
    assert summary, result.stdout
    sent, stored = int(summary.group(1)), int(summary.group(2))
    assert sent > 0
    assert stored == sent
    edge = re.search(r"edge agents: stored (\d+) readings", result.stdout)
    assert edge, result.stdout
    assert int(edge.group(1)) > 0  # ptys, Modbus TCP and local MQTT through real agents
    assert "[demo] stopped" in result.stdout
    assert _processes_using(var) == []
