"""The ConsumerGroup controller's read of a group against a scripted cluster (no
sockets): what it reads, and that one read holds one session with the cluster."""

from __future__ import annotations

from collections import Counter
from typing import Any

import kopf
import pytest
from brook_client.lag import PartitionOffsets
from brook_operator import consumer_group

from .test_groups_cli import COMMITTED, LOG_ENDS, LOG_STARTS, NEW_VERSIONS, healthy_cluster


@pytest.fixture
def cluster_named_main(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client Service of Broker "main" is the scripted broker b0."""
    monkeypatch.setattr(consumer_group, "bootstrap", lambda name, namespace: "b0:9092")


@pytest.mark.usefixtures("cluster_named_main")
async def test_one_read_of_a_group_opens_one_session() -> None:
    cluster = healthy_cluster(NEW_VERSIONS)
    connections: Counter[str] = Counter()

    def connect(host: str, port: int, client_id: str) -> Any:
        connections[host] += 1
        return cluster.connect(host, port, client_id)

    spec = kopf.Body({"spec": {"cluster": "main", "topics": ["orders"], "groupId": "payments"}})
    offsets = await consumer_group._read_offsets(spec.spec, "default", connect)

    assert offsets == {
        tp: PartitionOffsets(COMMITTED.get(tp), LOG_STARTS[tp], LOG_ENDS[tp])
        for tp in [("orders", 0), ("orders", 1), ("orders", 2)]
    }
    # One session: API versions agreed once, one connection to each broker asked.
    assert cluster.asked(18) == [0]
    assert connections and max(connections.values()) == 1
