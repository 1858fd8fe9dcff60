"""Completeness counts every batch in its window, including those of a gateway whose clock
runs ahead of the server's. (InfluxDB 1.x bounds a query by now() only when it has a
GROUP BY time(); this guards the completeness query against gaining one.)"""

from __future__ import annotations

import time

import pytest

from ingest import bookkeeping_line, completeness_query
from smartcity import Influxd

pytestmark = pytest.mark.integration


def test_a_gateway_clock_running_ahead_still_counts(influxd: Influxd, influx_db: str) -> None:
    now = time.time_ns()
    offsets_s = {0: -60, 1: -1, 2: 0, 4: 30}  # seq 3 lost; seq 4 stamped 30 s in the future
    body = "".join(
        bookkeeping_line(gateway="gw-ahead", seq=seq, newest_ts=now + off * 10**9, readings=10,
                         rejected=0, dup=False, worker="ingest-0", received_ns=now)
        for seq, off in offsets_s.items()
    ).encode()  # fmt: skip
    influxd.write(influx_db, body)
    answer = influxd.query(completeness_query(gateway="gw-ahead"), db=influx_db)
    series = answer["results"][0]["series"][0]
    row = dict(zip(series["columns"], series["values"][0], strict=True))
    assert row["received"] == 4
    assert (row["min_seq"], row["max_seq"]) == (0, 4)
    assert row["max_seq"] - row["min_seq"] + 1 - row["received"] == 1  # seq 3
    assert row["readings"] == 40
