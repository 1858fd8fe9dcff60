"""docs/gateway-install.md, followed in a fresh venv that holds only the [gateway] lock.

The project is built into a wheel from a copy of the tree (no build files left in it), a venv
gets ``requirements/gateway.txt`` (hashed, ``--no-deps``: from the package registry, fast
from pip's cache on a second run) and the wheel, then the guide's commands run from that
venv: ``edge init``, ``edge check``, ``edge run`` against a test mosquitto, ``edge status``.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from edge_helpers import Central, wait_until

from smartcity._localstack import Mosquitto

ROOT = Path(__file__).resolve().parents[2]
_SKIP = shutil.ignore_patterns(
    ".venv*", ".git", "tests", "bench", "artifacts", "var", "build", "*.egg-info",
    "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis",
)


def _run(*cmd: str | Path, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=300, cwd=cwd
    )
    out = f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    assert res.returncode == 0, f"{cmd}: exit {res.returncode}\n{out}"
    return res


@pytest.mark.slow
@pytest.mark.integration
def test_the_guide_in_a_fresh_gateway_venv(
    mosquitto: Mosquitto, topic_root: str, tmp_path: Path,
    central_factory: Callable[..., Central],
) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=_SKIP)
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         src, "-w", tmp_path / "wheels")
    wheel = next((tmp_path / "wheels").glob("smartcity_telemetry-*.whl"))
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    pip = venv / "bin" / "pip"
    _run(pip, "install", "-q", "--require-hashes", "--no-deps", "-r",
         src / "requirements" / "gateway.txt")
    _run(pip, "install", "-q", "--no-deps", wheel)
    _run(pip, "check")
    py = venv / "bin" / "python"
    found = _run(py, "-c", "import importlib.util as u; print([m for m in "
                 "('fastapi', 'uvicorn', 'influxdb_client', 'httpx', 'sqlalchemy') "
                 "if u.find_spec(m)])").stdout.strip()
    assert found == "[]", f"server packages in the gateway venv: {found}"
    site = next((venv / "lib").glob("python3.*/site-packages"))
    size = _run("du", "-sh", site).stdout.split()[0]
    print(f"[gateway] venv site-packages: {size}")

    smartcity = venv / "bin" / "smartcity"
    # what a gateway install says about the services it does not have
    res = subprocess.run([smartcity, "ingest", "--help"], capture_output=True, text=True,
                         timeout=60, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert "pip install 'smartcity-telemetry[server]'" in res.stdout, res.stdout
    res = subprocess.run([smartcity, "demo"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "smartcity-telemetry[gateway,server,sim]" in res.stderr
    assert "Traceback" not in res.stderr

    etc = tmp_path / "etc"
    _run(smartcity, "edge", "init", "--dir", etc, "--unit-dir", tmp_path / "units")
    unit = (tmp_path / "units" / "smartcity-edge.service").read_text()
    assert f"ExecStart={smartcity} edge run --config {etc / 'edge.yaml'}" in unit
    # the engineer edits the example: the test broker, no TLS (loopback), a simulated input
    cfg = yaml.safe_load((etc / "edge.yaml").read_text())
    cfg["gateway"] = {"id": "gw-install", "state_dir": "state"}  # relative: next to edge.yaml
    cfg["broker"] = {"host": "127.0.0.1", "port": mosquitto.port, "topic_root": topic_root,
                     "client_id": f"edge-gw-install-{topic_root}"}
    cfg["metrics"] = {"port": None}
    cfg["inputs"] = [{"type": "simulated", "name": "sim", "devices": 2, "rate_hz": 10}]
    cfg["batch"] = {"max_age_s": 0.2}
    (etc / "edge.yaml").write_text(yaml.safe_dump(cfg))
    _run(smartcity, "edge", "check", "--config", etc / "edge.yaml", cwd="/")

    central = central_factory(mosquitto, topic_root, "gw-install")
    log = (tmp_path / "agent.log").open("ab")
    proc = subprocess.Popen(
        [smartcity, "edge", "run", "--config", etc / "edge.yaml", "--log-format", "json"],
        stdout=log, stderr=log, cwd="/",
    )
    try:
        wait_until(lambda: len(central.readings()) >= 20, 30, "readings from the gateway venv")
        status = json.loads(
            _run(smartcity, "edge", "status", "--config", etc / "edge.yaml", "--json").stdout
        )
        assert status["links"] == {"sim": "up", "uplink": "up"}
        assert status["gateway"] == "gw-install"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert (etc / "state" / "spool.sqlite3").exists()
