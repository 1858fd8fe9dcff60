"""Running many gateways: `edge init`, `edge check` of every named file, exit 78 for config
problems in `edge run`, relative paths, ``${VAR}`` / ``${file:...}`` references."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_agent import ConfigError, load_config
from edge_agent._templates import render_unit, template_text
from smartcity._localstack import free_port
from tests.tls_helpers import Pki

SMARTCITY = str(Path(sys.executable).with_name("smartcity"))
ROOT = Path(__file__).resolve().parents[2]


def _edge(*args: str, cwd: Path | str = "/", env: dict[str, str] | None = None,
          timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SMARTCITY, "edge", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,  # systemd runs the agent in /
        env={**os.environ, **(env or {})},
    )


def _tls_config(tmp_path: Path, **broker: Any) -> dict[str, Any]:
    return {
        "gateway": {"id": "gw-ops", "state_dir": "state"},
        "broker": {
            "host": "mqtt.city.example",
            "port": 8883,
            "username": "gw-ops",
            "password_file": "secrets/broker-password",
            "tls": {"ca_file": "secrets/ca.pem"},
            **broker,
        },
        "metrics": {"port": None},
    }


def test_check_names_every_missing_file_and_exits_78(tmp_path: Path, pki: Pki) -> None:
    cfg = tmp_path / "edge.yaml"
    cfg.write_text(yaml.safe_dump(_tls_config(tmp_path)))
    res = _edge("check", "--config", str(cfg))
    assert res.returncode == 78, res.stderr
    assert f"{cfg}: broker.tls.ca_file: file not found: {tmp_path}/secrets/ca.pem" in res.stderr
    assert "broker.password_file: cannot read" in res.stderr
    assert f"{tmp_path}/secrets/broker-password" in res.stderr
    # with the files in place (relative to the config's folder, checked from /) it passes
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "ca.pem").write_bytes(pki.ca.read_bytes())
    (tmp_path / "secrets" / "broker-password").write_text("")
    res = _edge("check", "--config", str(cfg))
    assert res.returncode == 78
    assert "broker.password_file: " in res.stderr
    assert "is empty" in res.stderr
    (tmp_path / "secrets" / "broker-password").write_text("s3cret\n")
    res = _edge("check", "--config", str(cfg))
    assert res.returncode == 0, res.stderr
    assert "ok (gateway gw-ops" in res.stdout


def test_check_refuses_a_ca_file_that_is_not_a_certificate(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "ca.pem").write_text("not a certificate\n")
    (tmp_path / "secrets" / "broker-password").write_text("pw\n")
    cfg = tmp_path / "edge.yaml"
    cfg.write_text(yaml.safe_dump(_tls_config(tmp_path)))
    res = _edge("check", "--config", str(cfg))
    assert res.returncode == 78
    assert "broker.tls.ca_file: not a usable CA bundle" in res.stderr


def test_check_refuses_a_state_dir_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cfg = tmp_path / "edge.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "gateway": {"id": "gw-ops", "state_dir": str(blocker / "state")},
                "broker": {"host": "127.0.0.1"},
                "spool": {"path": str(blocker / "spool" / "s.sqlite3")},
            }
        )
    )
    res = _edge("check", "--config", str(cfg))
    assert res.returncode == 78
    assert f"gateway.state_dir: {blocker} is not a directory" in res.stderr
    assert f"spool.path: {blocker} is not a directory" in res.stderr


def test_run_exits_78_on_a_missing_ca_file_so_systemd_does_not_restart_it(
    tmp_path: Path,
) -> None:
    """The systemd unit has Restart=always and RestartPreventExitStatus=78: before, a missing
    ca_file made `edge run` exit 1 and restart every 5 s forever."""
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "broker-password").write_text("pw\n")
    cfg = tmp_path / "edge.yaml"
    cfg.write_text(yaml.safe_dump(_tls_config(tmp_path)))
    res = _edge("run", "--config", str(cfg), "--log-format", "json", timeout=30)
    assert res.returncode == 78, res.stderr
    assert "broker.tls.ca_file: file not found" in res.stderr
    assert not (tmp_path / "state" / "spool.sqlite3").exists()  # stopped before opening it
    unit = template_text("smartcity-edge.service")
    assert "RestartPreventExitStatus=78" in unit
    assert not any(x.startswith("ExecStartPre=") for x in unit.splitlines())


def test_relative_register_map_and_state_dir_resolve_from_the_config_folder(
    tmp_path: Path,
) -> None:
    maps = tmp_path / "conf" / "maps"
    maps.mkdir(parents=True)
    shipped = ROOT / "firmware_bridge" / "maps" / "eastron-sdm630.yaml"
    (maps / "my.yaml").write_text(shipped.read_text())
    cfg = tmp_path / "conf" / "edge.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "gateway": {"id": "gw-ops", "state_dir": "state"},
                "broker": {"host": "127.0.0.1"},
                "metrics": {"port": None},
                "inputs": [
                    {
                        "type": "modbus",
                        "name": "meter",
                        "device": "meter-1",
                        "tcp": {"host": "127.0.0.1", "port": 1502},
                        "register_map": "maps/my.yaml",
                    }
                ],
            }
        )
    )
    loaded = load_config(cfg)
    assert loaded.gateway.state_dir == tmp_path / "conf" / "state"
    assert loaded.inputs[0].register_map == str(maps / "my.yaml")  # type: ignore[union-attr]
    res = _edge("check", "--config", str(cfg), cwd="/")
    assert res.returncode == 0, res.stderr
    (maps / "my.yaml").unlink()
    res = _edge("check", "--config", str(cfg), cwd="/")
    assert res.returncode == 78
    assert "inputs[0]" in res.stderr
    assert str(maps / "my.yaml") in res.stderr


def test_env_and_file_references_expand_in_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pw").write_text("from-a-file\n")
    monkeypatch.setenv("SC_TEST_HOST", "127.0.0.1")
    monkeypatch.setenv("SC_TEST_PORT", "18830")
    cfg = tmp_path / "edge.yaml"
    cfg.write_text(
        "gateway: {id: gw-ops, state_dir: state}\n"
        "broker:\n"
        "  host: ${SC_TEST_HOST}\n"
        "  port: ${SC_TEST_PORT}\n"
        "  username: user-$${literal}\n"
        "  password: ${file:pw}\n"
    )
    loaded = load_config(cfg)
    assert loaded.broker.host == "127.0.0.1"
    assert loaded.broker.port == 18830
    assert loaded.broker.username == "user-${literal}"
    assert loaded.broker.read_password() == "from-a-file"


def test_unset_variable_and_missing_file_are_config_errors_exit_78(tmp_path: Path) -> None:
    cfg = tmp_path / "edge.yaml"
    cfg.write_text(
        "gateway: {id: gw-ops, state_dir: state}\n"
        "broker:\n"
        "  host: ${SC_TEST_SURELY_UNSET}\n"
        "  password: ${file:/nonexistent/pw}\n"
        "  username: ${not a name}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    text = str(err.value)
    assert "broker.host: environment variable SC_TEST_SURELY_UNSET is not set" in text
    assert "broker.password: cannot read /nonexistent/pw: No such file or directory" in text
    assert "broker.username: bad reference ${not a name}" in text
    env = {k: v for k, v in os.environ.items() if k != "SC_TEST_SURELY_UNSET"}
    res = subprocess.run(
        [SMARTCITY, "edge", "run", "--config", str(cfg)],
        capture_output=True, text=True, timeout=30, env=env,
    )
    assert res.returncode == 78
    assert "SC_TEST_SURELY_UNSET is not set" in res.stderr


def test_remote_configs_are_not_expanded() -> None:
    from edge_agent import parse_config

    cfg = parse_config(
        {"gateway": {"id": "gw-ops"}, "broker": {"host": "127.0.0.1", "username": "${HOME}"}},
        source="remote",
    )
    assert cfg.broker.username == "${HOME}"


def test_init_writes_example_config_and_unit_from_the_package(tmp_path: Path) -> None:
    res = _edge("init", "--dir", str(tmp_path / "etc"), "--unit-dir", str(tmp_path / "units"))
    assert res.returncode == 0, res.stderr
    config = tmp_path / "etc" / "edge.yaml"
    unit = (tmp_path / "units" / "smartcity-edge.service").read_text()
    assert config.read_text() == template_text("edge.yaml")
    assert f"ExecStart={SMARTCITY} edge run --config {config} --log-format json" in unit
    doc = next(x for x in unit.splitlines() if x.startswith("Documentation="))
    assert Path(doc.removeprefix("Documentation=file://")).is_file()
    lines = unit.splitlines()
    for line in ("Type=notify", "WatchdogSec=30", "NotifyAccess=main"):
        assert line in lines
    assert "RestartPreventExitStatus=78" in lines
    # the example validates; check then names the files the engineer has to provide
    res = _edge("check", "--config", str(config))
    assert res.returncode == 78
    assert "broker.tls.ca_file: file not found" in res.stderr
    assert "broker.password_file: cannot read" in res.stderr
    # a second init keeps the edited config
    config.write_text(config.read_text().replace("cabinet-017", "cabinet-018"))
    res = _edge("init", "--dir", str(tmp_path / "etc"))
    assert res.returncode == 0
    assert "cabinet-018" in config.read_text()
    assert "exists: kept" in res.stderr


def test_shipped_unit_is_the_template_rendered_for_opt_smartcity() -> None:
    assert (ROOT / "deploy" / "smartcity-edge.service").read_text() == render_unit()


def test_templates_are_package_data() -> None:
    """pyproject's package-data must ship the templates in the wheel."""
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = data["tool"]["setuptools"]["package-data"]["*"]
    assert "*.yaml" in patterns
    assert "*.service" in patterns


def test_status_without_a_running_agent_says_so(tmp_path: Path) -> None:
    cfg = tmp_path / "edge.yaml"
    port = free_port()
    cfg.write_text(
        yaml.safe_dump(
            {
                "gateway": {"id": "gw-ops", "state_dir": "state"},
                "broker": {"host": "127.0.0.1"},
                "metrics": {"port": port},
            }
        )
    )
    res = _edge("status", "--config", str(cfg), "--timeout", "2")
    assert res.returncode == 1
    assert "did not answer" in res.stderr
    assert f"127.0.0.1:{port}" in res.stderr
