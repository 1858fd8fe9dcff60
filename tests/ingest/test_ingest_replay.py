"""Dead-letter replay: what was refused for a reason since fixed is stored once, through every
live check; what is still wrong stays out; replaying twice doubles nothing."""

from __future__ import annotations

import json
import time

import pytest
from ingest_testkit import (
    Publisher,
    batch_payload,
    count_points,
    make_config,
    wait_for,
)
from typer.testing import CliRunner

from ingest import WorkerThread
from ingest._replay import deadletter_query, replay, stored_records
from smartcity._localstack import Influxd, Mosquitto
from telemetry import BOOKKEEPING_MEASUREMENT, DEADLETTER_MEASUREMENT

pytestmark = pytest.mark.integration


def test_replay_stores_what_todays_checks_pass_once_and_reports_the_rest(
    mosquitto: Mosquitto, influxd: Influxd, topic_root: str, influx_db: str,
    publisher: Publisher, base_ts: int,
) -> None:
    ahead = (time.time_ns() // 10**9 + 1800) * 10**9  # 30 min ahead: beyond the 300 s skew
    early = batch_payload("gw-a", 0, 0, 10, base_ts)
    future = batch_payload("gw-a", 0, 1, 6, ahead)
    broken = early[: len(early) // 2]
    config = make_config(mosquitto, influxd, topic_root, influx_db)
    with WorkerThread(config) as running:
        for payload in (early, future, broken):
            publisher.telemetry("gw-a", payload)
        publisher.flush()
        wait_for(lambda: running.worker.stats().messages_in_flight == 0
                 and running.worker.stats().deadletters >= 2, 20, "all acked")
    assert count_points(influxd, influx_db) == 10
    query = deadletter_query(since="1d")
    assert len(list(stored_records(config, query))) == 2

    # Unchanged configuration: a dry run says nothing would pass yet.
    dry = replay(config, stored_records(config, query), dry_run=True).summary()
    assert dry == {"records": 2, "readings_stored": 0, "refused": 2}
    assert count_points(influxd, influx_db) == 10

    # The gateway's clock was judged too strictly: allow an hour, replay.
    relaxed = config.model_copy(update={
        "intake": config.intake.model_copy(update={"max_clock_skew": 3600.0})})
    first = replay(relaxed, stored_records(relaxed, query)).summary()
    assert first["stored"] == 1
    assert first["readings_stored"] == 6
    assert first["refused"] == 1  # the cut payload is still malformed
    assert count_points(influxd, influx_db) == 16
    seqs = influxd.query(
        f'SELECT count(distinct("seq")) FROM "{BOOKKEEPING_MEASUREMENT}"', db=influx_db)
    assert seqs["results"][0]["series"][0]["values"][0][1] == 2  # bookkeeping as live

    # Replaying again rewrites the same points: nothing doubled, no new dead letters.
    runner = CliRunner()
    env = {"SMARTCITY_INGEST_INFLUX__URL": influxd.url,
           "SMARTCITY_INGEST_INFLUX__DATABASE": influx_db,
           "SMARTCITY_INGEST_INTAKE__MAX_CLOCK_SKEW": "3600",
           "SMARTCITY_INGEST_MQTT__TOPIC_ROOT": topic_root}
    from ingest.cli import app

    result = runner.invoke(app, ["deadletters", "replay", "--since", "1d"], env=env)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["stored"] == 1
    assert summary["readings_stored"] == 6
    assert count_points(influxd, influx_db) == 16
    stored = influxd.query(f'SELECT * FROM "{DEADLETTER_MEASUREMENT}"', db=influx_db)
    assert len(stored["results"][0]["series"][0]["values"]) == 2

    bad = runner.invoke(app, ["deadletters", "replay", "--since", "1d; DROP"], env=env)
    assert bad.exit_code == 2
    assert "not a duration" in bad.output
