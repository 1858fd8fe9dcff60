"""`smartcity sim`: help, validation exit codes, and a short run against a real broker."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from simulators.cli import app
from smartcity._localstack import Mosquitto

runner = CliRunner()
# The sim app on its own (what `smartcity sim` mounts), independent of the other services.
SIM = [sys.executable, "-c", "from simulators.cli import app; app()"]


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "devices", "scenarios", "check"):
        assert command in result.output


def test_check_summarises_and_refuses_bad_scenarios(tmp_path: Path) -> None:
    ok = runner.invoke(app, ["check", "--scenario", "city"])
    assert ok.exit_code == 0
    assert json.loads(ok.output)["gateways"] >= 200
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ngateways: [{prefix: a, count: 1, devices: {tram: 1}}]\n")
    result = runner.invoke(app, ["check", "--scenario", str(bad)])
    assert result.exit_code == 2
    assert "gateways[0].devices" in result.output


def test_the_cli_module_imports_only_typer_and_the_stdlib_at_module_level() -> None:
    import simulators.cli

    tree = ast.parse(Path(simulators.cli.__file__).read_text())
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            top.add(node.module.split(".")[0])
    assert top - sys.stdlib_module_names == {"typer"}


@pytest.mark.integration
def test_run_publishes_a_scenario_and_writes_its_ledger(
    tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto], topic_root: str
) -> None:
    broker = mosquitto_factory()
    ledger = tmp_path / "ledger.json"
    result = subprocess.run(
        [*SIM, "run", "--scenario", "small",
         "--broker", broker.url, "--speed", "600", "--duration", "2",
         "--topic-root", topic_root, "--ledger", str(ledger),
         "--no-retry-unrouted"],  # nobody subscribes to this broker
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    totals = json.loads(result.stdout.strip().splitlines()[-1])["totals"]
    assert totals["gateways"] == 14
    assert totals["acked_readings"] == totals["readings"] > 0
    assert json.loads(ledger.read_text())["totals"] == totals


def test_run_against_no_broker_exits_1(topic_root: str) -> None:
    from smartcity._localstack import free_port

    result = subprocess.run(
        [*SIM, "run", "--scenario", "small",
         "--broker", f"mqtt://127.0.0.1:{free_port()}", "--duration", "1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "broker" in result.stderr
