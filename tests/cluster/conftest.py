"""Fixtures for the cluster profile: a private 3-node NATS JetStream cluster (MQTT on each
node) per test, started with the locked nats-server of the venv and stopped afterwards."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

# The test modules import cluster_kit from their own directory (as tests/ingest does).
sys.path.insert(0, str(Path(__file__).parent))
from cluster_kit import ClusterFactory

from smartcity._localstack import ServiceError
from smartcity._localstack_nats import NatsCluster, NatsUser


@pytest.fixture
def nats_cluster_factory(tmp_path: Path) -> Iterator[ClusterFactory]:
    """``make(users=[NatsUser(...)], topic_root="sc", nodes=3)``: a started cluster."""
    started: list[NatsCluster] = []

    def make(users: Sequence[NatsUser] = (), **kwargs: object) -> NatsCluster:
        cluster = NatsCluster(
            data_dir=tmp_path / f"nats-{len(started)}", users=users, **kwargs  # type: ignore[arg-type]
        )
        started.append(cluster)
        try:
            cluster.start()
        except ServiceError as exc:
            pytest.fail(str(exc), pytrace=False)
        return cluster

    yield make
    for cluster in started:
        cluster.stop()
