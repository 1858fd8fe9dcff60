"""`smartcity demo` runs the end-to-end slice for real and leaves no process behind."""

from __future__ import annotations

import re
import subprocess
import sys
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


def test_demo_stores_every_reading_it_sent_and_stops_cleanly(tmp_path: Path) -> None:
    var = tmp_path / "var"
    result = subprocess.run(
        [sys.executable, "-m", "smartcity", "demo", "--var-dir", str(var), "--duration", "20"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
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
