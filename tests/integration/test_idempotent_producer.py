"""The idempotent producer: a retried batch is answered with its original offset and
stored once, on the leader that wrote it, after that broker restarts, and on a new
leader after the old one was killed; gaps and fenced epochs are refused. Under leaders
killed again and again, confluent-kafka with enable.idempotence leaves every record in
the log exactly once, in order."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from kio.schema.init_producer_id.v4.request import InitProducerIdRequest
from kio.schema.produce.v9.request import PartitionProduceData, ProduceRequest, TopicProduceData

from tests.support.batches import make_batch, split_batches

from .brokers import BrokerProcess, KafkaConnection, now_ms
from .clients import create_topic, fetch_all
from .cluster import check_acknowledged, write_while_killing_leaders
from .conftest import StartBroker, StartCluster

TOPIC = "idempotent"
NONE = 0
OUT_OF_ORDER_SEQUENCE_NUMBER = 45
INVALID_PRODUCER_EPOCH = 47
PARTITIONS = 4
PRODUCE_SECONDS = 30.0


def init_producer_id(connection: KafkaConnection) -> int:
    response = connection.request(
        InitProducerIdRequest(
            transactional_id=None,
            transaction_timeout=datetime.timedelta(seconds=60),
            producer_id=-1,
            producer_epoch=-1,
        )
    )
    assert response.error_code == NONE and response.producer_epoch == 0
    return int(response.producer_id)


def produce(connection: KafkaConnection, records: bytes, acks: int = -1) -> Any:
    """One Produce v9 of ``records`` to partition 0; returns the partition's answer."""
    response = connection.request(
        ProduceRequest(
            transactional_id=None,
            acks=acks,
            timeout=datetime.timedelta(seconds=10),
            topic_data=(
                TopicProduceData(
                    name=TOPIC, partition_data=(PartitionProduceData(index=0, records=records),)
                ),
            ),
        )
    )
    return response.responses[0].partition_responses[0]


def accepted_at(connection: KafkaConnection, records: bytes) -> int:
    answer = produce(connection, records)
    assert answer.error_code == NONE, answer
    return int(answer.base_offset)


def producer_batch(producer_id: int, sequence: int, count: int, epoch: int = 0) -> bytes:
    """Timestamped now, so that retention (7 days) leaves it alone."""
    return make_batch(
        [b"record %d" % (sequence + i) for i in range(count)],
        timestamps=[now_ms()] * count,
        producer_id=producer_id,
        producer_epoch=epoch,
        base_sequence=sequence,
    )


def stored_values(connection: KafkaConnection) -> list[tuple[int, bytes]]:
    """(base offset, batch without the fields the leader stamps) of every stored batch."""
    data, _ = fetch_all(connection, TOPIC)
    return split_batches(data)


def test_a_retried_batch_gets_its_original_offset_and_is_stored_once(
    broker: BrokerProcess,
) -> None:
    create_topic(broker.bootstrap, TOPIC)
    with KafkaConnection(broker.address) as connection:
        producer_id = init_producer_id(connection)
        first = producer_batch(producer_id, 0, 3)
        second = producer_batch(producer_id, 3, 2)
        assert accepted_at(connection, first) == 0
        assert accepted_at(connection, second) == 3
        for acks in (-1, 1):
            assert accepted_at(connection, first) == 0  # a retry of an earlier batch
            retry = produce(connection, second, acks=acks)
            assert (retry.error_code, retry.base_offset, retry.log_start_offset) == (NONE, 3, 0)
        gap = produce(connection, producer_batch(producer_id, 6, 1))
        assert gap.error_code == OUT_OF_ORDER_SEQUENCE_NUMBER and gap.base_offset == -1
        assert "6 (incoming seq. number), 4 (current end" in gap.error_message
        # A bumped epoch starts again at sequence 0; the older epoch is fenced from then on.
        assert accepted_at(connection, producer_batch(producer_id, 0, 1, epoch=1)) == 5
        fenced = produce(connection, producer_batch(producer_id, 5, 1))
        assert fenced.error_code == INVALID_PRODUCER_EPOCH
        stored = stored_values(connection)
    assert [offset for offset, _ in stored] == [0, 3, 5]
    # Four retries answered, six records appended: the retries are not counted as input.
    assert broker.metric("brook_duplicate_batches_total") == 4
    assert broker.metric("brook_records_in_total") == 6
    assert [payload for _, payload in stored[:2]] == [
        payload for _, payload in split_batches(first + second)
    ]


def test_a_restarted_broker_rebuilds_the_producer_state_from_its_log(
    start_broker: StartBroker,
) -> None:
    broker = start_broker()
    create_topic(broker.bootstrap, TOPIC)
    with KafkaConnection(broker.address) as connection:
        producer_id = init_producer_id(connection)
        for sequence in range(0, 10, 2):
            accepted_at(connection, producer_batch(producer_id, sequence, 2))
    broker.kill9()
    broker.start()
    with KafkaConnection(broker.address) as connection:
        assert accepted_at(connection, producer_batch(producer_id, 6, 2)) == 6
        gap = produce(connection, producer_batch(producer_id, 11, 1))
        assert gap.error_code == OUT_OF_ORDER_SEQUENCE_NUMBER
        assert accepted_at(connection, producer_batch(producer_id, 10, 1)) == 10
        assert [offset for offset, _ in stored_values(connection)] == [0, 2, 4, 6, 8, 10]


def test_a_new_leader_answers_a_retry_with_the_original_offset(
    start_cluster: StartCluster,
) -> None:
    cluster = start_cluster(3)
    create_topic(cluster.bootstrap, TOPIC, 1, {"min.insync.replicas": "2"}, replication_factor=3)
    cluster.wait_for_full_isr(TOPIC, 1)
    leader = cluster.wait_for_leader(TOPIC, 0)
    batches = [producer_batch(1000, sequence, 2) for sequence in range(0, 8, 2)]
    with KafkaConnection(cluster[leader].address) as connection:
        for batch in batches:
            accepted_at(connection, batch)  # acks=all: every replica has them
    cluster[leader].kill9()
    new_leader = cluster.wait_for_leader(TOPIC, 0, excluding={leader})
    cluster.wait_for_leader(TOPIC, 0, excluding={leader}, via=new_leader)  # it knows, too
    with KafkaConnection(cluster[new_leader].address) as connection:
        assert [accepted_at(connection, batch) for batch in batches] == [0, 2, 4, 6]
        assert accepted_at(connection, producer_batch(1000, 8, 1)) == 8
        assert [offset for offset, _ in stored_values(connection)] == [0, 2, 4, 6, 8]


@pytest.mark.slow
@pytest.mark.timeout(360)
def test_idempotent_producer_writes_each_record_once_while_leaders_are_killed(
    start_cluster: StartCluster,
) -> None:
    cluster = start_cluster(3)
    run = write_while_killing_leaders(
        cluster,
        TOPIC,
        PARTITIONS,
        PRODUCE_SECONDS,
        {"enable.idempotence": True, "max.in.flight.requests.per.connection": 5},
    )
    print(f"idempotent: {run.summary()}")
    failed = sorted(run.producer.failed.items())[:5]
    assert not run.producer.failed, f"{len(run.producer.failed)} records failed, e.g. {failed}"
    check = check_acknowledged(run.producer.acked, run.log)
    print(f"idempotent: {check}")
    assert check == (0, 0)
    for partition, records in run.log.items():
        sequences = [sequence for _, sequence in records]
        assert sequences == sorted(set(sequences)), f"partition {partition} is out of order"
    assert sum(map(len, run.log.values())) == len(run.producer.acked) == run.producer.sent
    assert len(run.kills) >= 4, f"only {len(run.kills)} leaders were killed"
