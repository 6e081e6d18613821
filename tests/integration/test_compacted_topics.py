"""A compacted topic (cleanup.policy=compact) keeps the latest record of each key, so,
as in Kafka, it refuses records without a key: the producer gets INVALID_RECORD and
nothing of that partition's data in the request is stored, while keyed records and
other partitions are taken as usual."""

from __future__ import annotations

import datetime
from typing import Any

from kio.schema.produce.v9.request import PartitionProduceData, ProduceRequest, TopicProduceData

from tests.support.batches import Record, encode_batch

from .brokers import BrokerProcess, KafkaConnection, now_ms
from .clients import ConfluentDriver, Message, create_topic, watermarks

INVALID_RECORD = 87
CONFLUENT = ConfluentDriver()
COMPACT = {"cleanup.policy": "compact"}


def test_confluent_producer_gets_invalid_record_for_a_keyless_record(
    broker: BrokerProcess,
) -> None:
    create_topic(broker.bootstrap, "profiles", config=COMPACT)
    [refused] = CONFLUENT.produce(broker.bootstrap, "profiles", [Message(0, None, b"x")], "lz4")
    assert refused.error == INVALID_RECORD, refused
    [keyed] = CONFLUENT.produce(
        broker.bootstrap, "profiles", [Message(0, b"user-1", b"ada")], "lz4"
    )
    assert (keyed.error, keyed.offset) == (None, 0)
    consumed = CONFLUENT.consume(broker.bootstrap, "profiles", [0], 1)
    assert [(record.key, record.value) for record in consumed] == [(b"user-1", b"ada")]
    assert watermarks(broker.bootstrap, "profiles") == (0, 1)
    # A topic that only deletes by retention takes records without a key.
    create_topic(broker.bootstrap, "events")
    [taken] = CONFLUENT.produce(broker.bootstrap, "events", [Message(0, None, b"x")], "lz4")
    assert (taken.error, taken.offset) == (None, 0)


def produce_to_partitions(broker: BrokerProcess, topic: str, records: list[bytes]) -> list[Any]:
    """One Produce v9 with ``records[i]`` for partition ``i``; each partition's answer."""
    with KafkaConnection(broker.address) as connection:
        response = connection.request(
            ProduceRequest(
                transactional_id=None,
                acks=-1,
                timeout=datetime.timedelta(seconds=10),
                topic_data=(
                    TopicProduceData(
                        name=topic,
                        partition_data=tuple(
                            PartitionProduceData(index=index, records=data)
                            for index, data in enumerate(records)
                        ),
                    ),
                ),
            )
        )
    return sorted(response.responses[0].partition_responses, key=lambda answer: answer.index)


def test_a_keyless_record_refuses_all_of_its_partitions_data_with_kafkas_message(
    broker: BrokerProcess,
) -> None:
    create_topic(broker.bootstrap, "accounts", partitions=2, config=COMPACT)

    def batch(*keys: bytes | None) -> bytes:
        records = [Record(key, b"balance") for key in keys]
        return encode_batch(records, base_timestamp=now_ms(), codec="zstd")

    refused, taken = produce_to_partitions(
        broker, "accounts", [batch(b"a", b"b") + batch(b"c", None), batch(b"d")]
    )
    assert refused.error_code == INVALID_RECORD
    assert refused.error_message == (
        "Compacted topic cannot accept message without key in topic partition accounts-0."
    )
    assert (taken.error_code, taken.base_offset) == (0, 0)
    # The keyed batch that came before the refused one in the same request is not stored.
    assert watermarks(broker.bootstrap, "accounts", 0) == (0, 0)
    assert watermarks(broker.bootstrap, "accounts", 1) == (0, 1)
