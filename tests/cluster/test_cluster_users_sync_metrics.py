"""`smartcity nats users-sync --metrics-port`: its /metrics follow what it does to a real
node (a one-node JetStream cluster, the sync as a process, the bucket written with the
NATS client as the API writes it)::

    test ── put good + bad entries ──▶ KV bucket ──▶ sync ── render, SIGHUP ──▶ nats-0
      └──── GET 127.0.0.1:PORT/metrics ◀──────────────┘   (node killed: bucket errors)
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import nats
import pytest
from cluster_kit import ClusterFactory, password
from nats.js.api import KeyValueConfig
from prometheus_client.parser import text_string_to_metric_families

from foundation import free_port
from smartcity._localstack_nats import NatsCluster, NatsUser

pytestmark = pytest.mark.integration

GOOD = "$2b$04$" + "b" * 53


def _metrics(port: int) -> dict[str, float]:
    """``name{labels}`` -> value; {} while nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout}s: {what}")
        time.sleep(0.1)


async def _put(cluster: NatsCluster, entries: dict[str, bytes]) -> None:
    nc = await nats.connect(cluster.urls, user=cluster.admin.name, password=cluster.admin.password)
    try:
        js = nc.jetstream()
        kv = await js.create_key_value(KeyValueConfig(bucket="sc_gateway_users", history=1))
        for key, value in entries.items():
            await kv.put(key, value)
    finally:
        await nc.close()


@pytest.fixture
def sync_log(tmp_path: Path) -> Iterator[Path]:
    log = tmp_path / "sync.log"
    yield log
    if log.exists():
        print(log.read_text()[-3000:])


def test_metrics_count_renders_reloads_skips_and_bucket_errors(
    nats_cluster_factory: ClusterFactory, tmp_path: Path, sync_log: Path
) -> None:
    sync_user = NatsUser(name="users-sync", password=password(), role="service")
    cluster = nats_cluster_factory([sync_user], nodes=1, users_sync=True)
    (node,) = cluster.nodes
    secret = tmp_path / "sync.password"
    secret.write_text(sync_user.password + "\n")
    port = free_port()
    argv = node.users_sync_argv(username=sync_user.name, password_file=secret, interval_s=0.2)
    with sync_log.open("wb") as out:
        proc = subprocess.Popen(
            [*argv, "--metrics-port", str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        # No bucket yet: no gateway, the node's file is current, nothing rendered.
        started = time.time()
        _until(
            lambda: (
                _metrics(port).get("smartcity_users_sync_last_success_timestamp_seconds", 0)
                >= started - 1
            ),
            20,
            "a first successful round",
        )
        first = _metrics(port)
        assert first["smartcity_users_sync_renders_total"] == 0
        assert first["smartcity_users_sync_bucket_errors_total"] == 0

        # One good entry and two bad ones: one gateway rendered, two skipped, one confirmed
        # reload of the node.
        asyncio.run(_put(cluster, {
            "gw-1": json.dumps({"bcrypt": GOOD}).encode(),
            "gw-2": b"not json",
            "gw-3": json.dumps({"bcrypt": "plain"}).encode(),
        }))  # fmt: skip
        _until(
            lambda: _metrics(port).get("smartcity_users_sync_renders_total") == 1,
            20,
            "the render",
        )
        _until(
            lambda: _metrics(port).get("smartcity_users_sync_reloads_total{result=confirmed}") == 1,
            20,
            "the confirmed reload",
        )
        after = _metrics(port)
        assert after["smartcity_users_sync_entries_skipped"] == 2
        assert after["smartcity_users_sync_gateways"] == 1
        assert '"gw-1"' in node.users_path.read_text()
        assert '"gw-2"' not in node.users_path.read_text()

        # The node gone: rounds fail and are counted, the last success stays where it was.
        cluster.kill(0)
        _until(
            lambda: _metrics(port).get("smartcity_users_sync_bucket_errors_total", 0) >= 1,
            30,
            "a bucket error counted",
        )
        stalled = _metrics(port)["smartcity_users_sync_last_success_timestamp_seconds"]
        time.sleep(1.0)
        assert _metrics(port)["smartcity_users_sync_last_success_timestamp_seconds"] == stalled
        assert stalled < time.time() - 0.9
        assert proc.poll() is None, "the sync keeps running without its node"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert not _metrics(port), "the port is closed with the sync"
