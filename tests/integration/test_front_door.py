"""The front door under a pipelining client on a raw socket: while acks=all produces wait
for their replicas, a connection reads on, and still answers every request exactly once,
in request order (none for acks=0), whatever else is in the pipeline (produces led
elsewhere, unknown topics, Metadata, ApiVersions, old Produce versions).

Each waiting answer is bounded: more than the listener's bound of waits on one
connection time out (REQUEST_TIMED_OUT) in order rather than piling up; a connection
closed while its answers wait loses none of the records already appended, which commit
once replicated; a retried idempotent batch that arrives while its original still waits
is answered with the original's offset. A request the broker refuses by closing the
connection (one it cannot read; an acks=0 produce that failed, as Kafka does so that the
producer refreshes its metadata) closes it only after the answers due before it.
"""

from __future__ import annotations

import datetime
import struct
import time
from typing import Any

import kafka
import pytest
from brook_broker.groups.offsets_topic import (
    OFFSETS_TOPIC,
    CommittedOffset,
    OffsetKey,
    offset_key,
    offset_value,
)
from brook_broker.storage.records import build_batch
from kafka.structs import OffsetAndMetadata, TopicPartition
from kio.schema.api_versions.v3.request import ApiVersionsRequest
from kio.schema.errors import ErrorCode
from kio.schema.fetch.v12.request import FetchPartition, FetchRequest, FetchTopic
from kio.schema.init_producer_id.v4.request import InitProducerIdRequest
from kio.schema.metadata.v12.request import MetadataRequest, MetadataRequestTopic
from kio.schema.produce.v3.request import PartitionProduceData as PartitionProduceDataV3
from kio.schema.produce.v3.request import ProduceRequest as ProduceRequestV3
from kio.schema.produce.v3.request import TopicProduceData as TopicProduceDataV3
from kio.schema.produce.v9.request import PartitionProduceData, ProduceRequest, TopicProduceData
from kio.schema.types import TopicName

from tests.support.batches import make_batch

from .brokers import (
    BrokerProcess,
    KafkaConnection,
    decode_response,
    encode_request,
    now_ms,
    scrape,
    wait_until,
)
from .clients import create_topic, fetch_all
from .conftest import StartBroker, StartCluster
from .groups import GROUP_BROKER_ARGS

TOPIC = "orders"
LED_ELSEWHERE = "elsewhere"
UNKNOWN = "no-such-topic"
STRICT = "strict"
WAITING_BOUND = 64
"""The listener's bound of answers waiting on one connection (_MAX_DEFERRED_ANSWERS)."""
CLUSTER_ARGS = (
    # A paused follower stays in the ISR (and its broker unfenced) for the whole test,
    # so acks=all waits run to the request's timeout.
    "--replica-lag-time-max-ms",
    "120000",
    "--broker-session-timeout-ms",
    "120000",
    "--broker-heartbeat-interval-ms",
    "1000",
)
_SIZE = struct.Struct(">i")


def produce(
    topic: str,
    acks: int,
    timeout_ms: int = 10_000,
    records: bytes | None = None,
    partition: int = 0,
) -> Any:
    """Produce v9 of one batch (three records, unless ``records``) to ``partition``."""
    if records is None:
        records = make_batch([b"a", b"b", b"c"], timestamps=[now_ms()] * 3)
    return ProduceRequest(
        transactional_id=None,
        acks=acks,
        timeout=datetime.timedelta(milliseconds=timeout_ms),
        topic_data=(
            TopicProduceData(
                name=topic,
                partition_data=(PartitionProduceData(index=partition, records=records),),
            ),
        ),
    )


def api_versions() -> ApiVersionsRequest:
    return ApiVersionsRequest(client_software_name="front-door", client_software_version="1")


def metadata(topic: str) -> MetadataRequest:
    return MetadataRequest(
        topics=(MetadataRequestTopic(topic_id=None, name=TopicName(topic)),),
        allow_auto_topic_creation=False,
        include_topic_authorized_operations=False,
    )


def fetch(session_id: int = 0, session_epoch: int = -1, max_wait_ms: int = 0) -> FetchRequest:
    """Fetch v12 of ``TOPIC``-0 from offset 0, read_committed; with ``max_wait_ms``, a
    long poll for any record."""
    return FetchRequest(
        replica_id=-1,
        max_wait=datetime.timedelta(milliseconds=max_wait_ms),
        min_bytes=1 if max_wait_ms else 0,
        max_bytes=1_000_000,
        isolation_level=1,  # read_committed
        session_id=session_id,
        session_epoch=session_epoch,
        topics=(
            FetchTopic(
                topic=TOPIC,
                partitions=(
                    FetchPartition(
                        partition=0,
                        current_leader_epoch=-1,
                        fetch_offset=0,
                        last_fetched_epoch=-1,
                        log_start_offset=-1,
                        partition_max_bytes=1_000_000,
                    ),
                ),
            ),
        ),
        forgotten_topics_data=(),
        rack_id="",
    )


def pipeline(connection: KafkaConnection, bodies: list[Any]) -> list[tuple[int, Any]]:
    """Send every request at once, then read the answers: (correlation id, request) of
    each request that expects one, in request order (acks=0 produces expect none)."""
    frames = []
    expected = []
    for body in bodies:
        correlation_id = connection.next_correlation_id()
        frame = encode_request(body, correlation_id)
        frames.append(_SIZE.pack(len(frame)) + frame)
        if not (isinstance(body, ProduceRequest) and body.acks == 0):
            expected.append((correlation_id, body))
    connection.send_raw(b"".join(frames))
    return expected


def read_answers(connection: KafkaConnection, expected: list[tuple[int, Any]]) -> list[Any]:
    """Each expected answer, decoded (which checks its correlation id), in order."""
    return [
        decode_response(
            type(body).__api_key__, type(body).__version__, connection.read_frame(), correlation_id
        )
        for correlation_id, body in expected
    ]


def partition_answer(response: Any) -> Any:
    return response.responses[0].partition_responses[0]


def no_more_answers(connection: KafkaConnection) -> bool:
    connection.sock.settimeout(0.5)
    try:
        return not connection.sock.recv(1)
    except TimeoutError:
        return True


def log_end_offset(broker: BrokerProcess, topic: str) -> int:
    """The log end offset of the broker's replica of ``topic``-0, from its metrics."""
    return int(
        sum(
            sample.value
            for sample in scrape(f"http://{broker.http_address}/metrics")
            if sample.name == "brook_log_end_offset" and sample.labels.get("topic") == topic
        )
    )


def stored_records(connection: KafkaConnection, topic: str) -> int:
    _, headers = fetch_all(connection, topic)
    return sum(header.records_count for header in headers)


def test_one_broker_answers_a_mixed_pipeline_once_each_in_order(
    start_broker: StartBroker,
) -> None:
    broker = start_broker()
    create_topic(broker.bootstrap, TOPIC)
    create_topic(broker.bootstrap, STRICT, config={"min.insync.replicas": "2"})
    kinds = [
        produce(TOPIC, -1),
        produce(TOPIC, 0),
        api_versions(),
        produce(TOPIC, 1),
        produce(UNKNOWN, -1),
        metadata(TOPIC),
        produce(STRICT, -1),
        produce(TOPIC, -1, timeout_ms=0),
        produce(TOPIC, -1, timeout_ms=-1),
        produce(TOPIC, -1, timeout_ms=2**31 - 1),
        ProduceRequestV3(
            transactional_id=None,
            acks=-1,
            timeout=datetime.timedelta(seconds=10),
            topic_data=(
                TopicProduceDataV3(
                    name=TOPIC,
                    partition_data=(
                        PartitionProduceDataV3(
                            index=0, records=make_batch([b"v3"], timestamps=[now_ms()])
                        ),
                    ),
                ),
            ),
        ),
    ]
    bodies = kinds * 20
    with KafkaConnection(broker.address, timeout=30) as connection:
        expected = pipeline(connection, bodies)
        answers = read_answers(connection, expected)
        assert no_more_answers(connection), "an answer too many (acks=0 answered?)"
        errors = {
            (body.topic_data[0].name, int(partition_answer(answer).error_code))
            for (_, body), answer in zip(expected, answers, strict=True)
            if isinstance(body, ProduceRequest | ProduceRequestV3)
        }
        # A sole replica commits what it appends: even timeout 0 or -1 is in time.
        assert errors == {
            (TOPIC, ErrorCode.none),
            (UNKNOWN, ErrorCode.unknown_topic_or_partition),
            (STRICT, ErrorCode.not_enough_replicas),
        }
    with KafkaConnection(broker.address) as connection:
        assert stored_records(connection, TOPIC) == 20 * (3 * 6 + 1)
        assert stored_records(connection, STRICT) == 0


def test_a_refused_request_closes_the_connection_after_the_answers_due(
    start_broker: StartBroker,
) -> None:
    broker = start_broker()
    create_topic(broker.bootstrap, TOPIC)
    undecodable = struct.pack(">hhi", 0, 9, 999) + b"\xff" * 6
    with KafkaConnection(broker.address) as connection:
        expected = pipeline(connection, [produce(TOPIC, -1), produce(TOPIC, 1)])
        connection.send_frame(undecodable)
        answers = read_answers(connection, expected)
        assert [partition_answer(a).error_code for a in answers] == [ErrorCode.none] * 2
        assert connection.is_closed_by_peer()
    # acks=0: no answer, but a failed append closes the connection (the producer then
    # refreshes its metadata); a successful one keeps it open.
    with KafkaConnection(broker.address) as connection:
        expected = pipeline(
            connection,
            [produce(TOPIC, -1), produce(TOPIC, 0), api_versions(), produce(UNKNOWN, 0)],
        )
        answers = read_answers(connection, expected)
        assert partition_answer(answers[0]).error_code == ErrorCode.none
        assert connection.is_closed_by_peer()
    with KafkaConnection(broker.address) as connection:
        assert stored_records(connection, TOPIC) == 4 * 3


def test_fetches_wait_in_turn_and_sessions_are_full_fetches_only(
    start_broker: StartBroker,
) -> None:
    """A long poll holds the answers behind it on its connection (they go out in order)
    and is woken by an append from another; epochs 0 and -1 ask for full fetches (with
    any session id), any other epoch for a session that does not exist."""
    broker = start_broker()
    create_topic(broker.bootstrap, TOPIC)
    with KafkaConnection(broker.address, timeout=30) as connection:
        expected = pipeline(connection, [fetch(max_wait_ms=20_000), api_versions()])
        with KafkaConnection(broker.address) as producer:
            assert partition_answer(producer.request(produce(TOPIC, -1))).error_code == 0
        started = time.monotonic()
        polled, _ = read_answers(connection, expected)
        assert time.monotonic() - started < 10, "the long poll was not woken by the append"
        assert polled.responses[0].partitions[0].high_watermark == 3
        for session_id, session_epoch, error in [
            (0, -1, ErrorCode.none),
            (0, 0, ErrorCode.none),
            (7, 0, ErrorCode.none),
            (7, -1, ErrorCode.none),
            (0, 4, ErrorCode.fetch_session_id_not_found),
            (7, 4, ErrorCode.fetch_session_id_not_found),
        ]:
            answer = connection.request(fetch(session_id, session_epoch))
            assert (answer.error_code, answer.session_id) == (error, 0), (session_id, session_epoch)
            if error == ErrorCode.none:
                assert answer.responses[0].partitions[0].records


@pytest.mark.timeout(240)
def test_answers_wait_for_replicas_in_order_and_within_bounds(
    start_cluster: StartCluster,
) -> None:
    cluster = start_cluster(3, *CLUSTER_ARGS)
    create_topic(cluster.bootstrap, TOPIC, replicas=[[0, 1, 2]])
    create_topic(cluster.bootstrap, LED_ELSEWHERE, replicas=[[1, 0, 2]])
    cluster.wait_for_full_isr(TOPIC, 1)
    cluster.wait_for_full_isr(LED_ELSEWHERE, 1)
    leader = cluster[0]
    with KafkaConnection(leader.address, timeout=60) as connection:
        producer_id = int(
            connection.request(
                InitProducerIdRequest(
                    transactional_id=None,
                    transaction_timeout=datetime.timedelta(seconds=60),
                    producer_id=-1,
                    producer_epoch=-1,
                )
            ).producer_id
        )

        # Healthy: a mixed pipeline, every answer once and in order.
        bodies = [
            produce(TOPIC, -1),
            produce(LED_ELSEWHERE, -1),
            produce(TOPIC, 0),
            metadata(TOPIC),
            produce(UNKNOWN, 1),
            produce(TOPIC, 1),
            api_versions(),
        ] * 30
        expected = pipeline(connection, bodies)
        codes = {
            (body.topic_data[0].name, int(partition_answer(answer).error_code))
            for (_, body), answer in zip(expected, read_answers(connection, expected), strict=True)
            if isinstance(body, ProduceRequest)
        }
        assert codes == {
            (TOPIC, ErrorCode.none),
            (LED_ELSEWHERE, ErrorCode.not_leader_or_follower),
            (UNKNOWN, ErrorCode.unknown_topic_or_partition),
        }
        stored = 30 * 3 * 3

        # A follower stops: four times the bound of waits time out, in order, interleaved
        # with answers that need no wait.
        cluster[2].pause()
        bodies = [produce(TOPIC, -1, timeout_ms=500), api_versions()] * (4 * WAITING_BOUND)
        started = time.monotonic()
        expected = pipeline(connection, bodies)
        answers = read_answers(connection, expected)
        waited = time.monotonic() - started
        assert {
            int(partition_answer(answer).error_code)
            for (_, body), answer in zip(expected, answers, strict=True)
            if isinstance(body, ProduceRequest)
        } == {ErrorCode.request_timed_out}
        assert waited < 30, f"{waited:.1f} s for {len(bodies)} answers"
        stored += 4 * WAITING_BOUND * 3

        # A retry of an idempotent batch while its original still waits: the original's
        # offset, once committed; on a connection then closed with answers waiting,
        # nothing appended is lost.
        first = make_batch(
            [b"first"], timestamps=[now_ms()], producer_id=producer_id, producer_epoch=0,
            base_sequence=0,
        )  # fmt: skip
        second = make_batch(
            [b"second"], timestamps=[now_ms()], producer_id=producer_id, producer_epoch=0,
            base_sequence=1,
        )  # fmt: skip
        expected = pipeline(
            connection,
            [produce(TOPIC, -1, 60_000, records) for records in (first, second, first)],
        )
        stored += 2
        with KafkaConnection(leader.address) as dropped:
            dropped_count = WAITING_BOUND - 14
            pipeline(dropped, [produce(TOPIC, -1, 60_000) for _ in range(dropped_count)])
            stored += dropped_count * 3
            wait_until(lambda: log_end_offset(leader, TOPIC) == stored, 10, message="all appended")
        cluster[2].resume()
        answers = read_answers(connection, expected)
        assert [int(partition_answer(a).error_code) for a in answers] == [ErrorCode.none] * 3
        offsets = [partition_answer(a).base_offset for a in answers]
        assert offsets[0] == offsets[2] != offsets[1], offsets
    with KafkaConnection(leader.address) as connection:
        wait_until(
            lambda: stored_records(connection, TOPIC) == stored,
            30,
            message=f"{stored} records committed",
        )
    assert "level=error" not in leader.log_tail(400)


def test_clients_cannot_produce_to_the_offsets_topic(start_broker: StartBroker) -> None:
    """Only the broker writes ``__consumer_offsets`` (INVALID_TOPIC_EXCEPTION, as Kafka):
    a client could otherwise forge any group's offsets, or store a record the coordinator
    cannot load."""
    broker = start_broker(*GROUP_BROKER_ARGS)
    create_topic(broker.bootstrap, TOPIC)
    committed = TopicPartition(TOPIC, 0)
    consumer = kafka.KafkaConsumer(
        bootstrap_servers=broker.bootstrap, group_id="victim", enable_auto_commit=False
    )
    try:
        consumer.commit({committed: OffsetAndMetadata(5, None, -1)})
    finally:
        consumer.close()
    forged = build_batch(
        [
            (
                offset_key(OffsetKey("victim", TOPIC, 0)),
                offset_value(CommittedOffset(999, -1, "", now_ms())),
            ),
            (b"\x00\x01\x00\x02\xff\xfe\x00\x01t\x00\x00\x00\x01", b"not UTF-8"),
        ],
        now_ms(),
    )
    with KafkaConnection(broker.address) as connection:
        partitions = connection.request(metadata(OFFSETS_TOPIC)).topics[0].partitions
        assert partitions
        bodies = [
            produce(OFFSETS_TOPIC, acks, records=forged, partition=partition.partition_index)
            for partition in partitions
            for acks in (1, -1)
        ]
        expected = pipeline(connection, bodies)
        assert {
            partition_answer(answer).error_code for answer in read_answers(connection, expected)
        } == {ErrorCode.invalid_topic_exception}
    broker.restart()
    consumer = kafka.KafkaConsumer(
        bootstrap_servers=broker.bootstrap, group_id="victim", enable_auto_commit=False
    )
    try:
        assert consumer.committed(committed) == 5
    finally:
        consumer.close()
