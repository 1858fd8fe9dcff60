"""The uplink's persistent session and how backlog and live data share a slow link.

Both tests put a :class:`LinkProxy` (the gateway's modem) between the agent and a real
mosquitto: cutting it drops the gateway's connection while the broker and the operators'
clients stay up; a delay makes every PUBACK a round trip late.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from edge_helpers import (
    Central,
    LinkProxy,
    Requester,
    await_until,
    base_config,
    make_config,
    running,
)

from edge_agent import EdgeAgent, Spool
from smartcity._localstack import Mosquitto
from telemetry import Batch, Reading, encode_batch

T0 = 1_750_000_000_000_000_000


def reading(i: int, *, device: str = "dev-1", ts: int | None = None) -> Reading:
    return Reading(
        device=device,
        measurement="Test",
        ts=T0 + i * 1_000_000 if ts is None else ts,
        fields={"v": float(i)},
    )


@pytest.mark.integration
def test_command_sent_while_gateway_offline_is_answered_after_reconnect(
    mosquitto: Mosquitto, topic_root: str, tmp_path: Path, central_factory: Callable[..., Central]
) -> None:
    central = central_factory(mosquitto, topic_root)
    proxy = LinkProxy(mosquitto.port)
    data = base_config(tmp_path, mosquitto, topic_root)
    data["broker"]["port"] = proxy.port
    data["broker"]["session_expiry_s"] = 600
    req = Requester(mosquitto.port, topic_root)
    sent = 0

    def feed(agent: EdgeAgent, n: int = 20) -> None:
        nonlocal sent
        agent.submit([reading(sent + k) for k in range(n)], None)
        sent += n

    async def main() -> None:
        agent = EdgeAgent(make_config(data))
        cmd = agent.topics.command("gw-test")
        async with running(agent):
            await await_until(lambda: agent.uplink.connected, 10, "connected")
            for _ in range(5):
                feed(agent)
                await asyncio.sleep(0.05)
            await await_until(lambda: len(central.readings()) == sent, 10, "first readings")
            # The modem drops: the broker sees the gateway go; operators keep working.
            proxy.cut()
            await await_until(lambda: not agent.uplink.connected, 10, "uplink down")
            await asyncio.to_thread(req.request, cmd, "ping", b"while-offline")
            for _ in range(10):
                feed(agent)
                await asyncio.sleep(0.05)
            assert req.reply_count == 0
            proxy.resume()
            await await_until(lambda: b"while-offline" in req.replies, 15, "queued command")
            await await_until(lambda: len(central.readings()) == sent, 10, "every reading")
            assert agent.uplink.stats.resumed_sessions >= 1
        # The agent stopped cleanly (a reboot): a command sent meanwhile waits for it too.
        await asyncio.to_thread(req.request, cmd, "reannounce", b"while-stopped")
        again = EdgeAgent(make_config(data))
        async with running(again):
            await await_until(lambda: b"while-stopped" in req.replies, 15, "after restart")
            assert again.uplink.stats.resumed_sessions == 1
            await asyncio.sleep(0.3)  # a redelivery, if any, would be answered by now

    try:
        asyncio.run(main())
    finally:
        req.close()
        proxy.close()
    assert req.replies[b"while-offline"].ok
    assert req.replies[b"while-offline"].result["pong"] is True
    assert req.replies[b"while-stopped"].result == {"published": True}
    assert req.reply_count == 2, "each command answered exactly once"
    # The resumed session published nothing twice by itself: the only replays are batches
    # whose PUBACK may have been lost in the cut (at most the in-flight window).
    seqs = [b.seq for b in central.batches]
    assert sorted(set(seqs)) == list(range(max(seqs) + 1))
    assert len(seqs) - len(set(seqs)) <= make_config(data).broker.inflight_window


@pytest.mark.integration
@pytest.mark.slow
def test_live_batches_overtake_a_long_backlog_on_a_slow_link(
    mosquitto: Mosquitto, topic_root: str, tmp_path: Path, central_factory: Callable[..., Central]
) -> None:
    """A day-old backlog drains oldest first while fresh batches go out within a round trip
    or two, long before the backlog is gone (docs/gateway-install.md, "Spool policy")."""
    central = central_factory(mosquitto, topic_root)
    proxy = LinkProxy(mosquitto.port, delay_s=0.01)  # 20 ms round trip
    data = base_config(tmp_path, mosquitto, topic_root)
    data["broker"].update(port=proxy.port, inflight_window=4)
    data["spool"] = {"synchronous": "normal"}  # the link, not fsync, sets the replay rate
    cfg = make_config(data)
    backlog = 200  # batches: 3-4 s of replay through the delayed link
    with Spool(cfg.spool_path, budget_bytes=int(cfg.spool.budget_bytes)) as spool:
        for b in range(backlog):
            seq = spool.next_seq
            rs = [reading(b * 10 + k, device="old") for k in range(10)]
            spool.append(seq, encode_batch(Batch(gateway="gw-test", seq=seq, readings=rs)), 10)
    agent = EdgeAgent(cfg)
    live_sent: list[tuple[float, int]] = []  # (wall time submitted, reading ts)

    async def main() -> None:
        async with running(agent):
            i = 0
            while agent.spool.stats().batches > 0 or i < 10:
                now = time.time()
                r = reading(i, device="live", ts=time.time_ns())
                agent.submit([r], None)
                live_sent.append((now, r.ts))
                i += 1
                await asyncio.sleep(0.1)
            await await_until(
                lambda: len(central.readings()) == backlog * 10 + len(live_sent), 15, "all"
            )

    try:
        asyncio.run(main())
    finally:
        proxy.close()
    with central.lock:
        batches = list(zip(central.arrivals, central.batches, strict=True))
    old = [(t, b.seq) for (t, _), b in batches if b.readings[0].device == "old"]
    live = {r.ts: t for (t, _), b in batches if b.readings[0].device == "live" for r in b.readings}
    drained_at = max(t for t, _ in old)
    assert drained_at - min(t for t, _ in old) > 1.5, "the backlog took a while to drain"
    # The backlog went out oldest first, in order.
    assert [s for _, s in sorted(old)] == sorted(s for _, s in old)
    # Every live reading submitted well before the backlog was gone arrived before it was.
    early = [ts for submitted, ts in live_sent if submitted < drained_at - 1.0]
    assert len(early) >= 5
    late = [ts for ts in early if live[ts] > drained_at]
    assert not late, f"{len(late)} live readings waited behind the backlog"
    # ... and quickly: a batch age (0.2 s), a tick and a few round trips, with slack for a
    # loaded test machine; far below the drain time.
    waits = [live[ts] - ts / 1e9 for ts in early]
    assert max(waits) < 1.0, waits
