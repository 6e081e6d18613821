"""Leaders killed with SIGKILL, again and again, under a steady acks=all load: every
acknowledged record survives, at its acknowledged offset (order is the idempotent
producer's test: without idempotence the client may reorder around a leader move)."""

from __future__ import annotations

import pytest

from .cluster import check_acknowledged, write_while_killing_leaders
from .conftest import StartCluster

TOPIC = "chaos"
PARTITIONS = 6
PRODUCE_SECONDS = 35.0


@pytest.mark.slow
@pytest.mark.timeout(360)
def test_acknowledged_records_survive_leaders_killed_every_few_seconds(
    start_cluster: StartCluster,
) -> None:
    cluster = start_cluster(3)
    run = write_while_killing_leaders(cluster, TOPIC, PARTITIONS, PRODUCE_SECONDS)
    print(f"chaos: {run.summary()}")
    check = check_acknowledged(run.producer.acked, run.log)
    print(f"chaos: {check.duplicates} duplicates, {check.reordered} records out of order")
    assert len(run.kills) >= 5, f"only {len(run.kills)} leaders were killed"
    assert len(run.producer.acked) > run.producer.sent // 2, "most records should be acknowledged"
