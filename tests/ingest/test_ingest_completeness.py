"""Completeness counts every batch in its window, including those of a gateway whose clock
runs ahead of the server's. (InfluxDB 1.x bounds a query by now() only when it has a
GROUP BY time(); this guards the completeness query against gaining one.)"""

from __future__ import annotations

import threading
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


def test_a_window_ending_in_the_past_is_never_read_torn(influxd: Influxd, influx_db: str) -> None:
    """Live batches of 20 gateways are written back to back for 7 s while completeness is
    read: with the window ending 2 s back, every row adds up (no seq shown missing, none
    over-counted). Without the end, InfluxDB reads such rows torn (see completeness_query)."""
    stop = threading.Event()
    written = [0]

    def write() -> None:
        seq = 0
        while not stop.is_set():
            now = time.time_ns()  # live batches: stamped (about) now
            influxd.write(influx_db, "".join(
                bookkeeping_line(gateway=f"gw-{g}", seq=seq, newest_ts=now + seq, readings=1,
                                 rejected=0, dup=False, worker="w", received_ns=now)
                for g in range(20)
            ).encode())  # fmt: skip
            seq += 1
            written[0] = seq

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    rows = 0
    try:
        deadline = time.monotonic() + 7
        while time.monotonic() < deadline:
            answer = influxd.query(completeness_query(since="now() - 1h", until="now() - 2s"),
                                   db=influx_db)
            for series in answer["results"][0].get("series", []):
                row = dict(zip(series["columns"], series["values"][0], strict=True))
                assert row["received"] == row["max_seq"] - row["min_seq"] + 1, row
                rows += 1
    finally:
        stop.set()
        writer.join(10)
    assert written[0] > 50
    assert rows > 100
