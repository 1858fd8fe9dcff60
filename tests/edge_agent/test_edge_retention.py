"""Spool retention of delivered batches and the ``resend`` command (real SQLite, mosquitto)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from edge_helpers import Central, Requester, await_until, base_config, make_config, running

from edge_agent import EdgeAgent
from edge_agent._commands import MAX_RESEND_SEQS, parse_resend_args
from edge_agent._errors import CommandError
from edge_agent._metrics import SnapshotCollector
from edge_agent._spool import Spool
from smartcity._localstack import Mosquitto
from telemetry import Reading

T0 = 1_750_000_000_000_000_000
KEEP_S = 100.0


def fill(spool: Spool, n: int, size: int = 100) -> list[int]:
    ids = []
    for _ in range(n):
        seq = spool.next_seq
        ids.append(spool.append(seq, bytes([seq % 256]) * size, 10))
    return ids


def test_delivered_batches_are_kept_not_replayed_and_pruned_by_age(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.sqlite3", budget_bytes=10**6, keep_delivered_s=KEEP_S) as spool:
        ids = fill(spool, 5)
        spool.delivered(ids[:3], now_ns=T0)
        st = spool.stats()
        # batches/readings/bytes mean "waiting to be sent"
        assert (st.batches, st.readings, st.bytes) == (2, 20, 200)
        assert (st.delivered_batches, st.delivered_bytes) == (3, 300)
        assert [b.seq for b in spool.oldest(after_id=0, exclude=set(), limit=10)] == [3, 4]
        assert [b.seq for b in spool.newest(above_id=0, exclude=set(), limit=10)] == [4, 3]
        assert spool.prune(now_ns=T0 + int(KEEP_S * 1e9) - 1) == 0
    # a restart keeps them, still delivered: never replayed
    with Spool(tmp_path / "s.sqlite3", budget_bytes=10**6, keep_delivered_s=KEEP_S) as spool:
        st = spool.stats()
        assert (st.batches, st.delivered_batches) == (2, 3)
        assert [b.seq for b in spool.oldest(after_id=0, exclude=set(), limit=10)] == [3, 4]
        assert spool.prune(now_ns=T0 + int(KEEP_S * 1e9)) == 3
        st = spool.stats()
        assert (st.batches, st.delivered_batches, st.delivered_bytes) == (2, 0, 0)
        assert spool.redeliver([0, 1, 2]).missing == [0, 1, 2]


def test_keep_zero_deletes_on_ack(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.sqlite3", budget_bytes=10**6, keep_delivered_s=0) as spool:
        ids = fill(spool, 3)
        spool.delivered(ids)
        st = spool.stats()
        assert (st.batches, st.delivered_batches) == (0, 0)
        assert spool.db.execute("SELECT COUNT(*) FROM batches").fetchone()[0] == 0


def test_over_budget_delivered_batches_go_first(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.sqlite3", budget_bytes=1000, keep_delivered_s=KEEP_S) as spool:
        ids = fill(spool, 8)  # 800 bytes
        spool.delivered(ids[:4], now_ns=T0)  # seqs 0-3 delivered, 4-7 waiting
        fill(spool, 3)  # 1100 bytes: one delivered batch (the oldest) must go
        st = spool.stats()
        assert (st.batches, st.delivered_batches, st.dropped_batches) == (7, 3, 0)
        assert st.delivered_evicted == 1
        assert spool.redeliver([0]).missing == [0]
        fill(spool, 4)  # 1000 + 400: the three other delivered ones, then one waiting batch
        st = spool.stats()
        assert (st.delivered_batches, st.dropped_batches, st.dropped_readings) == (0, 1, 10)
        assert st.batches == 10
        assert st.bytes == 1000
        # the oldest waiting batch (seq 4) was dropped, the rest are waiting in order
        waiting = spool.oldest(after_id=0, exclude=set(), limit=20)
        assert [b.seq for b in waiting] == list(range(5, 15))


def test_redeliver_found_waiting_missing(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.sqlite3", budget_bytes=10**6, keep_delivered_s=KEEP_S) as spool:
        ids = fill(spool, 6)
        spool.delivered(ids[:4], now_ns=T0)
        found = spool.redeliver([1, 2, 5, 9, 2])
        assert [b.seq for b in found.requeued] == [1, 2]
        assert found.requeued[0].payload == bytes([1]) * 100  # the original payload
        assert (found.waiting, found.missing, found.found) == (1, [9], 3)
        st = spool.stats()
        assert (st.batches, st.delivered_batches) == (4, 2)
        assert [b.seq for b in spool.oldest(after_id=0, exclude=set(), limit=10)] == [1, 2, 4, 5]
        # acknowledged again: delivered again
        spool.delivered([found.requeued[0].id])
        assert spool.stats().delivered_batches == 3


def test_spool_from_before_retention_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE batches (id INTEGER PRIMARY KEY AUTOINCREMENT, seq INTEGER NOT NULL,"
        " created_ns INTEGER NOT NULL, readings INTEGER NOT NULL, payload BLOB NOT NULL);"
        "INSERT INTO batches (seq, created_ns, readings, payload) VALUES (0, 1, 5, x'00ff');"
    )
    db.close()
    with Spool(path, budget_bytes=10**6, keep_delivered_s=KEEP_S) as spool:
        assert spool.stats().batches == 1
        [batch] = spool.oldest(after_id=0, exclude=set(), limit=5)
        spool.delivered([batch.id])
        assert spool.stats().delivered_batches == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({}, "give seqs and/or ranges"),
        ({"seqs": "1,2"}, "must be lists"),
        ({"seqs": [1, -2]}, "seqs[1] must be a non-negative integer"),
        ({"seqs": [True]}, "seqs[0] must be a non-negative integer"),
        ({"seqs": [1.5]}, "seqs[0] must be a non-negative integer"),
        ({"ranges": [[5, 1]]}, "goes backwards"),
        ({"ranges": [[1, 2, 3]]}, "must be [from, to]"),
        ({"ranges": [[0, MAX_RESEND_SEQS]]}, f"more than {MAX_RESEND_SEQS}"),
        ({"seqs": list(range(MAX_RESEND_SEQS + 1))}, f"more than {MAX_RESEND_SEQS}"),
        ({"seqs": [1], "all": True}, "unknown argument"),
    ],
)
def test_resend_args_refused(args: dict[str, Any], message: str) -> None:
    with pytest.raises(CommandError, match=None) as info:
        parse_resend_args(args)
    assert message in str(info.value)


def test_resend_args_seqs_and_ranges() -> None:
    assert parse_resend_args({"seqs": [7, 3, 3], "ranges": [[5, 7], [10, 10]]}) == [3, 5, 6, 7, 10]
    assert len(parse_resend_args({"ranges": [[0, MAX_RESEND_SEQS - 1]]})) == MAX_RESEND_SEQS


def feed(agent: EdgeAgent, start: int, n: int) -> None:
    agent.submit(
        [
            Reading(device="dev-1", measurement="Test", ts=T0 + (start + i) * 10**6,
                    fields={"v": float(start + i)})
            for i in range(n)
        ],
        None,
    )


@pytest.mark.integration
def test_resend_command_republishes_held_batches(
    mosquitto: Mosquitto, topic_root: str, tmp_path: Path, central_factory: Callable[..., Central]
) -> None:
    central = central_factory(mosquitto, topic_root)
    data = base_config(tmp_path, mosquitto, topic_root)
    agent = EdgeAgent(make_config(data))
    req = Requester(mosquitto.port, topic_root)
    cmd = agent.topics.command("gw-test")

    def seqs() -> list[int]:
        with central.lock:
            return sorted(b.seq for b in central.batches)

    async def main() -> None:
        async with running(agent):
            await await_until(lambda: agent.uplink.connected, 10)
            for i in range(5):  # five batches (max_age_s 0.2)
                feed(agent, i * 10, 10)
                await asyncio.sleep(0.3)
            await await_until(lambda: agent.spool.stats().delivered_batches >= 5, 10)
            await await_until(lambda: agent.spool.stats().batches == 0, 10)
            n = agent.spool.next_seq
            # a PUBACK can reach the agent before the subscriber has the message
            await await_until(lambda: len(seqs()) >= n, 10, "every batch at the central")
            sent = seqs()
            assert sent == list(range(n))
            await asyncio.to_thread(
                req.request, cmd, "resend", b"r1", seqs=[1], ranges=[[3, 4], [n, n + 2]]
            )
            await asyncio.to_thread(req.request, cmd, "resend", b"r2", seqs=[-1])
            await asyncio.to_thread(req.request, cmd, "resend", b"r3", ranges="all")
            await await_until(lambda: len(req.replies) == 3, 10, "three replies")
            await await_until(lambda: len(seqs()) == n + 3, 10, "three batches again")
            await await_until(lambda: agent.spool.stats().batches == 0, 10)
            assert agent.uplink.stats.resent_batches == 3
            st = agent.spool.stats()
            assert st.delivered_batches == n
            collector = SnapshotCollector(agent.snapshot)
            metrics = {m.name: m.samples[0].value for m in collector.collect() if m.samples}
            assert metrics["edge_batches_resent"] == 3
            assert metrics["edge_spool_delivered_batches"] == n
            assert metrics["edge_spool_batches"] == 0
        # a restart replays nothing: every batch is delivered
        again = EdgeAgent(make_config(data))
        async with running(again):
            await await_until(lambda: again.uplink.connected, 10)
            await asyncio.sleep(0.5)

    try:
        asyncio.run(main())
    finally:
        req.close()
    n = agent.spool.next_seq
    got = seqs()
    assert got == sorted([*range(n), 1, 3, 4])  # the original seqs, once more each
    ok = req.replies[b"r1"]
    assert ok.ok
    assert ok.result["found"] == 3
    assert ok.result["missing"] == [n, n + 1, n + 2]
    for bad in (b"r2", b"r3"):
        assert not req.replies[bad].ok
        assert "resend:" in (req.replies[bad].error or "")
