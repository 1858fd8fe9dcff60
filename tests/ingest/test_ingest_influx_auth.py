"""InfluxDB with authentication, as the server install sets it up: `smartcity ingest influxdb`
makes an admin, the database and one least-privilege user per service; a real worker writes
with its own user, the API's user may only read, nobody gets in without a password."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from ingest_testkit import Publisher, batch_payload, make_config, wait_for
from typer.testing import CliRunner

from foundation import InfluxQueryError, influxql
from ingest import WorkerThread
from ingest.cli import app
from smartcity._localstack import Influxd, Mosquitto

pytestmark = pytest.mark.integration

DB = "smartcity"


class AuthInfluxd(Influxd):
    """influxd with ``auth-enabled = true``, as docs/server-install.md configures it."""

    def config_text(self) -> str:
        text = super().config_text()
        assert "auth-enabled = false" in text
        return text.replace("auth-enabled = false", "auth-enabled = true")


@pytest.fixture(scope="module")
def influx_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthInfluxd]:
    server = AuthInfluxd(data_dir=tmp_path_factory.mktemp("influxd-auth"))
    server.start()
    yield server
    server.stop()


def q(server: Influxd, query: str, user: str | None = None, pw: str | None = None) -> dict:  # type: ignore[type-arg]
    return influxql(server.url, query, db=DB, username=user, password=pw)


def test_services_get_least_privilege_users_and_ingest_writes_with_its_own(
    influx_auth: AuthInfluxd, mosquitto: Mosquitto, topic_root: str, tmp_path: Path,
    base_ts: int,
) -> None:
    runner = CliRunner()
    admin_file = tmp_path / "etc" / "influxdb-admin"
    target = ["--url", influx_auth.url, "--database", DB, "--admin-file", str(admin_file)]
    rp = ["--retention", "raw", "--duration", "90d", "--shard-duration", "1d"]
    done = runner.invoke(app, ["influxdb", "init", *target, *rp])
    assert done.exit_code == 0, done.output
    assert stat.S_IMODE(admin_file.stat().st_mode) == 0o600
    assert runner.invoke(app, ["influxdb", "init", *target, *rp]).exit_code == 0  # idempotent
    for role, pw in (("ingest", "ingest-pw'\\x"), ("api", "api-pw")):
        done = runner.invoke(app, ["influxdb", "add-user", role, *target], input=pw + "\n")
        assert done.exit_code == 0, done.output
        assert pw not in done.output

    # Nobody without a password; the api user reads but writes nothing and drops nothing.
    with pytest.raises(InfluxQueryError, match=r"HTTP 401"):
        q(influx_auth, "SHOW MEASUREMENTS")
    q(influx_auth, "SHOW MEASUREMENTS", "api", "api-pw")
    for statement in ('DROP DATABASE "smartcity"', 'CREATE USER "x" WITH PASSWORD \'y\'',
                      'DROP MEASUREMENT "TrafficFlowObserved"'):
        with pytest.raises(InfluxQueryError, match=r"HTTP 403"):
            q(influx_auth, statement, "api", "api-pw")
        with pytest.raises(InfluxQueryError, match=r"HTTP 403"):
            q(influx_auth, statement, "ingest", "ingest-pw'\\x")

    # A real worker with the ingest user (no schema rights: init made the database and RP).
    config = make_config(
        mosquitto, influx_auth, topic_root, DB,
        influx={"username": "ingest", "password": "ingest-pw'\\x", "create_database": False,
                "retention": {"name": "raw", "duration": "90d", "create": False}},
    )
    publisher = Publisher(mosquitto, topic_root)
    try:
        with WorkerThread(config) as running:
            for seq in range(5):
                publisher.telemetry("gw-a", batch_payload("gw-a", 0, seq, 10, base_ts))
            publisher.flush()
            wait_for(lambda: running.worker.stats().readings_written >= 50, 30, "written")
    finally:
        publisher.close()
    answer = q(influx_auth, 'SELECT count("intensity") FROM "raw"."TrafficFlowObserved"',
               "api", "api-pw")
    assert answer["results"][0]["series"][0]["values"][0][1] == 50

    # Revoked: refused from then on.
    done = runner.invoke(app, ["influxdb", "remove-user", "api", "--url", influx_auth.url,
                               "--admin-file", str(admin_file)])
    assert done.exit_code == 0, done.output
    with pytest.raises(InfluxQueryError, match=r"HTTP 401"):
        q(influx_auth, "SHOW MEASUREMENTS", "api", "api-pw")


def test_init_refuses_clearly_when_users_exist_and_the_admin_file_is_missing(
    influx_auth: AuthInfluxd, tmp_path: Path,
) -> None:
    # the first test made users; a second platform's init without the admin file
    done = CliRunner().invoke(app, ["influxdb", "init", "--url", influx_auth.url,
                                    "--database", DB, "--admin-file", str(tmp_path / "none")])
    assert done.exit_code == 1
    assert "has users already" in done.output
    assert not (tmp_path / "none").exists()
