"""One admin request cannot wedge the cluster: partition counts are checked before a
change is proposed to the metadata quorum.

The regression: CreatePartitions to 2**31 - 1 (kafka-python sends it as asked) was
committed, and applying it held every broker's event loop in partition placement for
good; /healthz and ApiVersions stopped answering, and a restart replayed it. Now the
broker that receives the request refuses it with INVALID_PARTITIONS and a message, the
quorum never sees it, and the cluster goes on serving. (Skipping such a record already
in a log is shown by the unit tests of ``ClusterState``.)
"""

from __future__ import annotations

import time
import urllib.request

import kafka
import pytest
from kafka.admin import NewTopic
from kio.schema.api_versions.v3.request import ApiVersionsRequest
from kio.schema.errors import ErrorCode

from .brokers import KafkaConnection
from .clients import create_topic
from .cluster import SequenceProducer, check_acknowledged, read_back
from .conftest import StartCluster

INT32_MAX = 2**31 - 1
ANSWER_S = 2.0
"""How soon every broker must answer after the refusal (a wedged one never does)."""


def _admin(bootstrap: str) -> kafka.KafkaAdminClient:
    return kafka.KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=20_000)


@pytest.mark.timeout(180)
def test_create_partitions_to_int32_max_is_refused_and_the_cluster_goes_on(
    start_cluster: StartCluster,
) -> None:
    cluster = start_cluster(3)
    topic = "grow"
    create_topic(cluster.bootstrap, topic, 1, replication_factor=3)
    cluster.wait_for_full_isr(topic, 1)
    admin = _admin(cluster.bootstrap)
    try:
        answers = [
            admin.create_partitions(
                {topic: INT32_MAX}, timeout_ms=10_000, validate_only=validate, raise_errors=False
            ).results[0]
            for validate in (True, False)
        ]
        created = admin.create_topics(
            [NewTopic("huge", num_partitions=INT32_MAX, replication_factor=1)],
            timeout_ms=10_000,
            raise_errors=False,
        )["topics"][0]
    finally:
        admin.close()
    for answer in answers:
        assert answer.error_code == ErrorCode.invalid_partitions, answer
        assert "Excessively large number of partitions per request" in answer.error_message
        assert f"{INT32_MAX - 1} requested" in answer.error_message
    assert created["error_code"] == ErrorCode.invalid_partitions, created
    assert f"{INT32_MAX} requested" in created["error_message"]

    for broker in cluster.brokers:
        started = time.monotonic()
        with KafkaConnection(broker.address, timeout=ANSWER_S) as connection:
            versions = connection.request(
                ApiVersionsRequest(client_software_name="t", client_software_version="1")
            )
        assert versions.error_code == ErrorCode.none
        with urllib.request.urlopen(f"http://{broker.http_address}/healthz", timeout=ANSWER_S) as r:
            assert r.status == 200
        view = cluster.view(topic, "huge", via=broker.node_id)
        assert list(view.topics[topic]) == [0] and "huge" not in view.topics
        assert time.monotonic() - started < 3 * ANSWER_S
        # Refused before it was proposed: no broker applied (and skipped) it.
        assert "logged by an older version" not in broker.log_path.read_text()

    producer = SequenceProducer(cluster.bootstrap, topic, [0])
    producer.produce_all(100)
    assert not producer.failed
    check_acknowledged(producer.acked, read_back(cluster.bootstrap, topic, [0]))
